"""Self-contained checkpoints: ``model.safetensors`` (the weights) + ``checkpoint.json`` (everything else).

A checkpoint directory, as written by ``epir train`` (:func:`epir.inference.train_checkpoint`)::

    DIR/model.safetensors   the model's state dict (safetensors: raw tensors, no code, no pickle)
    DIR/checkpoint.json     model name and arguments, class names, the input the model expects (channels,
                            size, range, input transform, the fitted input normalisation), the preprocessing
                            settings a clip goes through, the training data and recipe, the epir version, and
                            the size and SHA-256 of model.safetensors
    DIR/config.yaml         the fully resolved run configuration it was trained with (for people; not read)
    DIR/teacher.safetensors only for a recipe that mixes its teacher into the predictions (``train.distill_mix``
                            > 0, e.g. ``--recipe teacher-mix``): the teacher's state dict; ``checkpoint.json``
                            then has a ``teacher`` entry (its model, arguments, input normalisation, test-time
                            augmentation, weight ``mix`` and its file's size and SHA-256) and format version 2;
                            an ensemble teacher (``train.distill_members`` = K > 1) adds ``members``: K, and the
                            file holds its K networks (``members.0.*`` ...) averaged as probabilities

Loading (:func:`load_checkpoint`) never unpickles anything: the JSON is plain data, the weights are read with
``safetensors``, and the model is rebuilt from the registry by name. Everything is validated and every problem
is a :class:`CheckpointError` naming the file, what was expected and how to fix it: a missing or unknown key,
a newer format version, an unregistered model or argument, a weights file whose size or hash changed since it
was saved, and missing, extra or mis-shaped tensors.

The fitted input normalisation (``train.input_norm``; per-channel mean and std of the training maps) is part
of the checkpoint, and :class:`InferenceModel` puts it, and the input transform (HTNet's mosaic), in front of
the network, so that it takes the same 0-255 flow map as the training data, in PyTorch and in ONNX alike.
With a teacher, the module returns the log of ``(1 - mix) * p_model + mix * p_teacher``, each model predicting
with its own normalisation and test-time augmentation: exactly the probabilities LOSO scored for the recipe.

One exception: a model trained on a mosaic built around each sample's own landmarks (data written by
``epir preprocess``, ``input.landmarks: per-clip``) needs each clip's five points, which are not part of the
map. Its :class:`InferenceModel` then takes the mosaic, and :class:`~epir.inference.Predictor` builds it from
the clip's aligned face.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from epir._version import __version__
from epir.config import TTA_KINDS
from epir.data.augment import recentre_maps
from epir.data.base import CHANNELS
from epir.data.transforms import INPUT_TRANSFORMS, transform_maps
from epir.engine.train import InputNorm, mirror_mean_probabilities
from epir.errors import CheckpointError, CheckpointNotFoundError, EpirError, UnknownNameError
from epir.fileio import write_atomic
from epir.models import ProbabilityMean, create_model

#: Identifies an epir checkpoint in ``checkpoint.json``.
FORMAT = "epir-checkpoint"
#: Version of the ``checkpoint.json`` layout written by this epir; a newer one is refused on load. Version 2 adds
#: the ``teacher`` entry; a checkpoint without a teacher is still written as version 1, which older epirs read.
FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
TEACHER_WEIGHTS_FILE = "teacher.safetensors"
META_FILE = "checkpoint.json"
CONFIG_FILE = "config.yaml"


class InferenceModel(nn.Module):
    """A trained network with its input transform and fitted input normalisation in front of it.

    Takes flow maps exactly like the training data, ``(B, 3, H, W)`` float, channels u, v, strain at 0-255,
    applies the input transform (``mosaic``: HTNet's four regions around the official fixed landmarks;
    ``smooth``: a Gaussian blur of sigma 1 px, each channel min-max normalised again), then
    ``(x - mean) / std``, and returns the network's logits ``(B, num_classes)``. This is the module that
    :class:`~epir.inference.Predictor` runs and that :func:`~epir.inference.export_onnx` exports.
    ``transform`` is the transform done inside the module ("none" for a model whose mosaic needs per-clip
    landmarks: it takes the mosaic). ``tta="flip"`` (the recipe's ``train.tta``) returns the log of the mean of
    the probabilities of the input and of its mirror, exactly what LOSO scored (the mirror is taken of the
    transformed input, as in training); its softmax is that mean.

    ``teacher`` (another :class:`InferenceModel`, with its own normalisation and test-time augmentation) and
    ``mix`` = m make it return the log of ``(1 - m) * p + m * p_teacher``, the recipe's ``train.distill_mix``
    blend; its softmax is that blend.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, norm: InputNorm, transform: str = "none", tta: str = "none", *,
                 teacher: InferenceModel | None = None, mix: float = 0.0) -> None:
        super().__init__()
        if teacher is not None and not 0 < mix <= 1:
            raise CheckpointError(f"A teacher's weight in the predictions must be in (0, 1], got {mix!r}.")
        if transform not in INPUT_TRANSFORMS:
            raise CheckpointError(
                f"Unknown input transform {transform!r}; expected one of {', '.join(INPUT_TRANSFORMS)}."
            )
        if tta not in TTA_KINDS:
            raise CheckpointError(f"Unknown test-time augmentation {tta!r}; expected one of {', '.join(TTA_KINDS)}.")
        self.model = model
        self.transform = transform
        self.tta = tta
        self.teacher = teacher
        self.mix = float(mix) if teacher is not None else 0.0
        self.recentre = norm.recentre
        self.register_buffer("mean", norm.mean.detach().reshape(1, -1, 1, 1).float().clone())
        self.register_buffer("std", norm.std.detach().reshape(1, -1, 1, 1).float().clone())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x: flow maps (B, 3, H, W) at 0-255. Returns the network's input (transformed, then standardised)."""
        return self._standardize(transform_maps(self.transform, x))

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        if self.recentre:
            x = recentre_maps(x)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: flow maps (B, 3, H, W), channels u, v, strain at 0-255. Returns logits (B, num_classes)."""
        logits = self._own_logits(x)
        if self.teacher is None:
            return logits
        probs = (1.0 - self.mix) * logits.softmax(-1) + self.mix * self.teacher(x).softmax(-1)
        return probs.log()

    def _own_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta == "none":
            return self.model(self.normalize(x))
        t = transform_maps(self.transform, x)
        return mirror_mean_probabilities(lambda m: self.model(self._standardize(m)), t).log()

    def has_intermediates(self) -> bool:
        """Whether the network exposes ``forward_intermediates`` (tokens, selection, attention)."""
        return callable(getattr(self.model, "forward_intermediates", None))

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, Any]:
        """The network's ``forward_intermediates`` on maps ``x`` at 0-255 (see :meth:`has_intermediates`)."""
        if not self.has_intermediates():
            raise CheckpointError(f"{type(self.model).__name__} has no forward_intermediates (explanation hook).")
        return getattr(self.model, "forward_intermediates")(self.normalize(x))  # noqa: B009 (a hook, checked above)


@dataclass
class Checkpoint:
    """A trained model with everything needed to use it.

    Attributes:
        model: the network (eval mode after loading), taking normalised input.
        norm: the fitted input normalisation (``(x - mean) / std``), shape (1, C, 1, 1) each.
        meta: the content of ``checkpoint.json`` (see the module docstring; plain JSON data).
        path: the directory it was loaded from or saved to, if any.
        teacher: the teacher mixed into the predictions and its input normalisation, when the recipe mixes one in
            (``meta["teacher"]``; eval mode); None otherwise.
    """

    model: nn.Module
    norm: InputNorm
    meta: dict[str, Any]
    path: Path | None = field(default=None)
    teacher: tuple[nn.Module, InputNorm] | None = field(default=None)

    @functools.cached_property
    def info(self) -> CheckpointMeta:
        """:attr:`meta` as a validated, typed record (built once)."""
        return CheckpointMeta.from_json(self.meta, (self.path or Path(".")) / META_FILE)

    @property
    def model_name(self) -> str:
        """The registered model name."""
        return self.info.model_name

    @property
    def teacher_mix(self) -> float:
        """The teacher's weight m in the predictions, ``(1 - m) * model + m * teacher`` (0 without a teacher)."""
        return self.info.teacher.mix if self.info.teacher is not None else 0.0

    @property
    def model_args(self) -> dict[str, Any]:
        """The model's keyword arguments."""
        return dict(self.info.model_args)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class of each output, in order."""
        return self.info.class_names

    @property
    def input_size(self) -> int:
        """The map side the model takes."""
        return self.info.input_size

    @property
    def transform(self) -> str:
        """The input transform applied before the model (``none``, ``mosaic``, ``smooth``)."""
        return self.info.transform

    @property
    def per_clip_landmarks(self) -> bool:
        """Whether the input transform needs each clip's own landmarks (a mosaic trained on per-sample points)."""
        return self.transform == "mosaic" and self.info.landmarks == "per-clip"

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing settings a clip goes through (``PreprocessSettings.to_dict()``)."""
        return dict(self.info.preprocessing)

    def inference_model(self) -> InferenceModel:
        """The network with its input transform and normalisation in front: takes 0-255 maps (eval mode).

        With per-clip landmarks (:attr:`per_clip_landmarks`) the transform is left out: the module takes the mosaic.
        """
        transform = "none" if self.per_clip_landmarks else self.transform
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        teacher = None
        if self.teacher is not None and self.info.teacher is not None:
            teacher = InferenceModel(self.teacher[0], self.teacher[1], transform, self.info.teacher.tta)
        return InferenceModel(self.model, self.norm, transform, self.info.tta, teacher=teacher,
                              mix=self.teacher_mix).to(device).eval()


def make_meta(
    *,
    model_name: str,
    model_args: dict[str, Any],
    class_names: tuple[str, ...] | list[str],
    norm: InputNorm,
    norm_kind: str,
    input_size: int,
    transform: str = "none",
    landmarks: str = "default",
    preprocessing: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    tta: str = "none",
    teacher: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``checkpoint.json`` content (without the ``weights`` entry, which :func:`save_checkpoint` adds).

    Args:
        model_name: the registered model.
        model_args: all its keyword arguments.
        class_names: the name of each class index.
        norm: the fitted input normalisation.
        norm_kind: the recipe's ``train.input_norm``.
        input_size: height and width of the flow maps.
        transform: the input transform (``data.input_transform``: none, mosaic or smooth).
        landmarks: ``default`` (the mosaic uses the official fixed points) or ``per-clip`` (each sample's own).
        preprocessing: ``PreprocessSettings.to_dict()`` of the clips' preprocessing.
        training: where the model came from (dataset, subjects, config, ...).
        tta: the recipe's test-time augmentation (``train.tta``: none or flip), applied when predicting.
        teacher: the teacher mixed into the predictions (:func:`teacher_meta`), if any; its weights are given to
            :func:`save_checkpoint`.
    """
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if teacher is not None else 1,
        "epir_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"name": model_name, "args": _jsonable(model_args)},
        "class_names": list(class_names),
        "input": {
            "channels": list(CHANNELS),
            "size": int(input_size),
            "range": [0, 255],
            "transform": transform,
            "landmarks": landmarks,
            "tta": tta,
            "normalization": {"kind": norm_kind, **norm.to_dict()},
        },
        "preprocessing": _jsonable(preprocessing or {}),
        "training": _jsonable(training or {}),
    }
    if teacher is not None:
        meta["teacher"] = _jsonable(teacher)
    return meta


def teacher_meta(
    *, model_name: str, model_args: dict[str, Any], norm: InputNorm, norm_kind: str, mix: float, tta: str = "none",
    members: int = 1,
) -> dict[str, Any]:
    """The ``teacher`` entry of ``checkpoint.json`` (without its ``weights``, which :func:`save_checkpoint` adds).

    Args:
        model_name: the teacher's registered model.
        model_args: all its keyword arguments.
        norm: its fitted input normalisation.
        norm_kind: its recipe's ``train.input_norm``.
        mix: its weight m in the predictions, ``(1 - m) * model + m * teacher`` (the recipe's ``train.distill_mix``).
        tta: its recipe's test-time augmentation.
        members: how many networks of that model the teacher averages (``train.distill_members``; the weights
            are then a :class:`~epir.models.ProbabilityMean`'s). Written only when above 1, so a single teacher's
            entry is as before.
    """
    entry: dict[str, Any] = {"model": {"name": model_name, "args": _jsonable(model_args)}, "mix": float(mix),
                             "tta": tta, "normalization": {"kind": norm_kind, **norm.to_dict()}}
    if members > 1:
        entry["members"] = int(members)
    return entry


def _jsonable(value: Any) -> Any:
    """Mappings to dicts, tuples and arrays to lists, numpy/torch scalars to Python, paths to strings, recursively
    (so that the JSON round trip is exact).
    """
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy / torch arrays and scalars
        return _jsonable(value.tolist())
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def _weights_blob(model: nn.Module, name: str) -> tuple[bytes, dict[str, Any]]:
    """``model``'s state dict as safetensors bytes, and the ``weights`` entry (file, size, SHA-256, tensor count)."""
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    blob = save(tensors, metadata={"format": "pt", "epir_model": name})
    return blob, {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "tensors": len(tensors)}


def save_checkpoint(
    out_dir: str | os.PathLike, model: nn.Module, meta: dict[str, Any], *, config_yaml: str | None = None,
    overwrite: bool = False, teacher: nn.Module | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``checkpoint.json`` (and ``config.yaml`` when given) to ``out_dir``.

    Args:
        out_dir: the checkpoint directory (created).
        model: the trained network; its ``state_dict()`` is saved.
        meta: the checkpoint description (:func:`make_meta`); a ``weights`` entry with the file's size, SHA-256
            and tensor count is added.
        config_yaml: the run configuration as YAML text, saved as ``config.yaml`` for reference.
        overwrite: replace a checkpoint already in ``out_dir``; otherwise that is an error.
        teacher: the teacher that ``meta["teacher"]`` describes (required with that entry, refused without it);
            saved as ``teacher.safetensors``.

    Returns:
        The directory.
    """
    if (teacher is None) != ("teacher" not in meta):
        raise CheckpointError("save_checkpoint: give the teacher's weights (teacher=) exactly when meta has a "
                              "'teacher' entry (make_meta(teacher=teacher_meta(...))).")
    out = Path(out_dir).expanduser()
    if (out / META_FILE).exists() and not overwrite:
        raise CheckpointError(
            f"{out} already holds a checkpoint ({META_FILE}); choose another out_dir (--out), or pass overwrite=True "
            "(--overwrite) "
            "(overwrite=True) to replace it."
        )
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory; choose another out_dir (--out).")
    out.mkdir(parents=True, exist_ok=True)
    blob, weights = _weights_blob(model, str(meta["model"]["name"]))
    meta = {**meta, "weights": {"file": WEIGHTS_FILE, **weights}}
    teacher_blob = None
    if teacher is not None:
        teacher_blob, weights = _weights_blob(teacher, str(meta["teacher"]["model"]["name"]))
        meta["teacher"] = {**meta["teacher"], "weights": {"file": TEACHER_WEIGHTS_FILE, **weights}}
    (out / META_FILE).unlink(missing_ok=True)  # an interrupted save leaves no checkpoint.json: not a checkpoint
    _write_atomic(out / WEIGHTS_FILE, blob)
    if teacher_blob is not None:
        _write_atomic(out / TEACHER_WEIGHTS_FILE, teacher_blob)
    else:
        (out / TEACHER_WEIGHTS_FILE).unlink(missing_ok=True)  # overwriting a mixed checkpoint with a plain one
    if config_yaml is not None:
        _write_atomic(out / CONFIG_FILE, config_yaml.encode())
    _write_atomic(out / META_FILE, (json.dumps(meta, indent=2, default=str) + "\n").encode())
    return out


# --------------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------------


def _get(meta: dict[str, Any], key: str, typ: type | tuple[type, ...], file: Path) -> Any:
    """``meta[a][b]`` for ``key = "a.b"``, checked against ``typ``."""
    value: Any = meta
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise CheckpointError(
                f"{file}: missing key {key!r}. The file is incomplete or was edited by hand; "
                "write it again with `epir train`."
            )
        value = value[part]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise CheckpointError(f"{file}: {key!r} must be a {names}, got {value!r}.")
    return value


@dataclass(frozen=True)
class TeacherMeta:
    """The ``teacher`` entry of ``checkpoint.json``: a second model whose probabilities are mixed into the
    predictions (a recipe with ``train.distill_mix`` > 0).

    Attributes:
        model_name: its registered model.
        model_args: all its keyword arguments.
        mix: its weight m, ``(1 - m) * model + m * teacher``, in (0, 1].
        tta: its test-time augmentation.
        norm_kind: its ``train.input_norm``.
        norm_mean: per-channel mean of its input normalisation.
        norm_std: per-channel standard deviation.
        weights_file: its weights file's name in the directory.
        weights_sha256: its SHA-256 (checked on load).
        weights_bytes: its size.
        members: how many networks of the model it averages (1: a single network).
    """

    model_name: str
    model_args: Mapping[str, Any]
    mix: float
    tta: str
    norm_kind: str
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    weights_file: str
    weights_sha256: str
    weights_bytes: int
    members: int = 1


def _check_normalization(meta: dict[str, Any], key: str, file: Path) -> dict[str, Any]:
    """``meta[key]`` (e.g. ``input.normalization``): per-channel mean and std, finite and in float32 range."""
    for part in ("mean", "std"):
        values = _get(meta, f"{key}.{part}", list, file)
        if len(values) != len(CHANNELS) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise CheckpointError(
                f"{file}: {key}.{part} must be {len(CHANNELS)} finite numbers, got {values!r}."
            )
    norm = _get(meta, key, dict, file)
    if not all(1e-6 <= v <= 1e6 for v in norm["std"]) or not all(abs(v) <= 1e6 for v in norm["mean"]):
        raise CheckpointError(f"{file}: {key} must have std in [1e-6, 1e6] and |mean| <= 1e6 "
                              f"(float32 range for 0-255 maps), got mean {norm['mean']}, std {norm['std']}.")
    return norm


def _teacher_from_json(meta: dict[str, Any], version: int, classes: int, file: Path) -> TeacherMeta:
    """Validate ``meta["teacher"]`` (see :class:`TeacherMeta`)."""
    if version < 2:
        raise CheckpointError(f"{file}: a 'teacher' entry needs format_version 2 (older epirs would ignore it and "
                              f"predict with the model alone), got {version}; write it again with `epir train`.")
    name = _get(meta, "teacher.model.name", str, file)
    args = _get(meta, "teacher.model.args", dict, file)
    if args.get("num_classes", classes) != classes:
        raise CheckpointError(f"{file}: teacher.model.args.num_classes is {args['num_classes']!r} but there are "
                              f"{classes} class_names; they must agree.")
    mix = _get(meta, "teacher.mix", (int, float), file)
    if isinstance(mix, bool) or not math.isfinite(mix) or not 0 < mix <= 1:
        raise CheckpointError(f"{file}: teacher.mix must be a number in (0, 1] (the teacher's weight in the "
                              f"predictions), got {mix!r}.")
    tta = meta["teacher"].get("tta", "none")
    if tta not in TTA_KINDS:
        raise CheckpointError(f"{file}: teacher.tta must be one of {', '.join(TTA_KINDS)}, got {tta!r}.")
    norm = _check_normalization(meta, "teacher.normalization", file)
    members = meta["teacher"].get("members", 1)
    if not isinstance(members, int) or isinstance(members, bool) or not 1 <= members <= 64:
        raise CheckpointError(f"{file}: teacher.members must be an integer from 1 to 64 (the networks the teacher "
                              f"averages), got {members!r}; write it again with `epir train`.")
    _get(meta, "teacher.weights.file", str, file)
    _get(meta, "teacher.weights.sha256", str, file)
    _get(meta, "teacher.weights.bytes", int, file)
    weights = meta["teacher"]["weights"]
    return TeacherMeta(model_name=name, model_args=dict(args), mix=float(mix), tta=tta,
                       norm_kind=str(norm.get("kind", "none")), norm_mean=tuple(float(v) for v in norm["mean"]),
                       norm_std=tuple(float(v) for v in norm["std"]), weights_file=weights["file"],
                       weights_sha256=weights["sha256"], weights_bytes=weights["bytes"], members=members)


@dataclass(frozen=True)
class CheckpointMeta:
    """``checkpoint.json`` as a typed record; :meth:`from_json` is its one validating constructor.

    Attributes:
        format_version: the file format's version (at most :data:`FORMAT_VERSION`).
        epir_version: the epir that wrote it.
        created: when it was written (ISO 8601).
        model_name: the registered model.
        model_args: all its keyword arguments.
        class_names: the name of each class index.
        input_size: height and width of the flow maps.
        transform: the input transform (``none``, ``mosaic`` or ``smooth``).
        landmarks: ``default`` or ``per-clip`` (a mosaic around each sample's own points).
        tta: test-time augmentation applied when predicting (``none`` or ``flip``; ``none`` in older files).
        norm_mean: per-channel mean of the input normalisation.
        norm_std: per-channel standard deviation.
        weights_file: the weights file's name in the directory.
        weights_sha256: its SHA-256 (checked on load).
        weights_bytes: its size.
        preprocessing: ``PreprocessSettings.to_dict()`` of the clips' preprocessing.
        training: where the model came from (dataset, subjects, config, ...).
        teacher: the teacher mixed into the predictions (format version 2), or None.
    """

    format_version: int
    epir_version: str
    created: str
    model_name: str
    model_args: Mapping[str, Any]
    class_names: tuple[str, ...]
    input_size: int
    transform: str
    landmarks: str
    tta: str
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    weights_file: str
    weights_sha256: str
    weights_bytes: int
    preprocessing: Mapping[str, Any]
    training: Mapping[str, Any]
    teacher: TeacherMeta | None = None

    @classmethod
    def from_json(cls, meta: Any, file: Path) -> CheckpointMeta:
        """Validate the parsed ``checkpoint.json`` (``file`` names it in errors) and return it as a record.

        Raises:
            CheckpointError: anything missing, of the wrong type, out of range or inconsistent, named.
        """
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{file} is not an epir checkpoint description (its 'format' is not {FORMAT!r}).")
        version = _get(meta, "format_version", int, file)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{file} has format version {version}, written by a newer epir ({meta.get('epir_version', '?')}); "
                f"this epir reads up to version {FORMAT_VERSION}. Upgrade epir (pip install -U epir)."
            )
        if version < 1:
            raise CheckpointError(f"{file}: format_version must be >= 1, got {version}.")
        _get(meta, "model.name", str, file)
        _get(meta, "model.args", dict, file)
        names = _get(meta, "class_names", list, file)
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise CheckpointError(f"{file}: 'class_names' must be a non-empty list of distinct strings, got {names!r}.")
        if any(not n.isprintable() or not n.strip() for n in names):
            raise CheckpointError(f"{file}: class names must be printable text (no control characters such as "
                                  f"terminal escapes), got {names!r}.")
        classes = meta["model"]["args"].get("num_classes", len(names))
        if classes != len(names):
            raise CheckpointError(f"{file}: model.args.num_classes is {classes!r} but there are {len(names)} "
                                  "class_names; they must agree.")
        channels = _get(meta, "input.channels", list, file)
        if channels != list(CHANNELS):
            raise CheckpointError(
                f"{file}: input.channels is {channels}; epir models read {list(CHANNELS)} (in that order)."
            )
        size = _get(meta, "input.size", int, file)
        if size < 1:
            raise CheckpointError(f"{file}: input.size must be a positive int, got {size}.")
        transform = _get(meta, "input.transform", str, file)
        if transform not in INPUT_TRANSFORMS:
            raise CheckpointError(
                f"{file}: unknown input.transform {transform!r}; this epir knows {', '.join(INPUT_TRANSFORMS)}."
            )
        landmarks = meta["input"].get("landmarks", "default")
        if landmarks not in ("default", "per-clip"):
            raise CheckpointError(f"{file}: input.landmarks must be 'default' or 'per-clip', got {landmarks!r}.")
        tta = meta["input"].get("tta", "none")
        if tta not in TTA_KINDS:
            raise CheckpointError(f"{file}: input.tta must be one of {', '.join(TTA_KINDS)}, got {tta!r}.")
        _check_normalization(meta, "input.normalization", file)
        _get(meta, "weights.file", str, file)
        _get(meta, "weights.sha256", str, file)  # the integrity check is not optional
        _get(meta, "weights.bytes", int, file)
        if not isinstance(meta.get("preprocessing", {}), dict):
            raise CheckpointError(f"{file}: 'preprocessing' must be a mapping of preprocessing settings.")
        teacher = _teacher_from_json(meta, version, len(names), file) if "teacher" in meta else None
        norm = meta["input"]["normalization"]
        return cls(
            format_version=version, epir_version=str(meta.get("epir_version", "")),
            created=str(meta.get("created", "")),
            model_name=meta["model"]["name"], model_args=dict(meta["model"]["args"]), class_names=tuple(names),
            input_size=size, transform=transform, landmarks=landmarks, tta=tta,
            norm_mean=tuple(float(v) for v in norm["mean"]),
            norm_std=tuple(float(v) for v in norm["std"]), weights_file=meta["weights"]["file"],
            weights_sha256=meta["weights"]["sha256"], weights_bytes=meta["weights"]["bytes"],
            preprocessing=dict(meta.get("preprocessing") or {}), training=dict(meta.get("training") or {}),
            teacher=teacher,
        )


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``checkpoint.json`` of checkpoint directory ``path`` (no weights are read)."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise CheckpointNotFoundError(
            f"Checkpoint {directory} does not exist; give the directory `epir train --out` wrote."
        )
    if directory.is_file():
        if directory.name in (META_FILE, WEIGHTS_FILE):
            directory = directory.parent
        else:
            raise CheckpointError(
                f"{directory} is a file; a checkpoint is a directory holding {META_FILE} and {WEIGHTS_FILE} "
                "(what `epir train --out DIR` writes)."
            )
    file = directory / META_FILE
    if not file.is_file():
        raise CheckpointNotFoundError(
            f"{directory} is not an epir checkpoint: it has no {META_FILE}. Give the directory `epir train --out` "
            "wrote (a LOSO run directory holds no final model)."
        )
    try:
        meta = json.loads(file.read_text())
    except RecursionError:
        raise CheckpointError(f"{file} is nested too deeply to be a checkpoint description; it is damaged.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{file} is not valid JSON ({e}); the file is damaged, write it again with `epir train`."
        ) from None
    CheckpointMeta.from_json(meta, file)  # every check, in one place
    return meta


def _read_weights(directory: Path, weights: dict[str, Any], key: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of the file that ``weights`` (``meta[key]``: file, bytes, sha256) describes, verified."""
    name = weights["file"]
    if Path(name).name != name:
        raise CheckpointError(
            f"{directory / META_FILE}: {key}.file must be a file name in the checkpoint, got {name!r}."
        )
    file = directory / name
    if not file.is_file():
        raise CheckpointNotFoundError(
            f"{file} is missing: a checkpoint needs its weights beside {META_FILE}. Copy the whole directory."
        )
    blob = file.read_bytes()
    expected_size, expected_hash = weights.get("bytes"), weights.get("sha256")
    if expected_size is not None and len(blob) != expected_size:
        raise CheckpointError(
            f"{file} has {len(blob)} bytes but {META_FILE} says {expected_size}: the file is truncated or was "
            "replaced. Copy it again from the original checkpoint, or train again."
        )
    if expected_hash is not None and hashlib.sha256(blob).hexdigest() != expected_hash:
        raise CheckpointError(
            f"{file} does not match the SHA-256 recorded in {META_FILE}: the weights were modified or belong to "
            "another checkpoint. Copy the original file again, or train again."
        )
    try:
        return load(blob)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file ({e}).") from None


def _check_state(
    file: Path, model_name: str, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Every tensor present, none extra, each with the model's shape and dtype."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    bad = [
        f"{k}: file {tuple(state[k].shape)} {state[k].dtype}, model {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors (e.g. {', '.join(extra[:3])})")
    if bad:
        problems.append(f"{len(bad)} tensors of the wrong shape or dtype ({'; '.join(bad[:3])})")
    if problems:
        raise CheckpointError(
            f"{file} does not fit model {model_name!r} with the arguments in {META_FILE}: {'; '.join(problems)}. "
            f"The weights and {META_FILE} come from different models; use the pair `epir train` wrote together."
        )


#: More parameters than any epir model could sensibly have (HTNet, the largest, has 139.6 M).
MAX_PARAMETERS = 2_000_000_000


def build_checkpoint_model(meta: dict[str, Any], file: Path | None = None) -> nn.Module:
    """A freshly initialised network of the model and arguments ``meta`` names (errors name ``file``); with
    ``meta["members"]`` = K > 1 (an ensemble teacher), K of them as one :class:`~epir.models.ProbabilityMean`.
    """
    members = int(meta.get("members", 1))
    if members > 1:
        return ProbabilityMean([build_checkpoint_model({**meta, "members": 1}, file) for _ in range(members)])
    where = f"{file}: " if file is not None else ""
    name, args = meta["model"]["name"], dict(meta["model"]["args"])
    try:
        try:
            with torch.device("meta"):  # first without memory: absurd arguments must not allocate terabytes
                shell = create_model(name, **args)
            count = sum(p.numel() for p in shell.parameters())
        except NotImplementedError:
            count = 0  # a model whose construction reads tensor values cannot be sized without memory
        except RuntimeError as e:
            if "meta" not in str(e):
                raise
            count = 0
        if count > MAX_PARAMETERS:
            raise CheckpointError(f"{where}model {name!r} with these arguments would have more than "
                                  f"{MAX_PARAMETERS:,} parameters; the arguments are damaged.")
        model = create_model(name, **args)
    except UnknownNameError as e:
        raise CheckpointError(f"{where}{e} Was the checkpoint written by a newer epir or a plugin?") from None
    except CheckpointError:
        raise
    except EpirError as e:
        raise CheckpointError(f"{where}model {name!r}: {e}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{where}cannot build model {name!r} from its arguments: {e}") from None
    if "num_classes" in args and int(args["num_classes"]) != len(meta["class_names"]):
        raise CheckpointError(
            f"{where}model.args.num_classes is {args['num_classes']} but there are {len(meta['class_names'])} "
            "class_names; they must agree."
        )
    return model


def load_checkpoint(path: str | os.PathLike, *, device: str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint directory (see the module docstring); the model is in eval mode.

    Args:
        path: the directory (``checkpoint.json`` or ``model.safetensors`` inside it are accepted too).
        device: torch device to put the model on.

    Raises:
        CheckpointNotFoundError: the directory or one of its files does not exist.
        CheckpointError: anything in it is malformed, does not match, or was changed since it was saved.
    """
    p = Path(path).expanduser()
    meta = read_meta(p)
    directory = p.parent if p.is_file() else p
    model = _load_model(directory, meta, "weights", device)
    norm = _input_norm(meta["input"]["normalization"])
    teacher = None
    if "teacher" in meta:
        t = meta["teacher"]
        teacher_model = _load_model(directory, {"model": t["model"], "class_names": meta["class_names"],
                                                "weights": t["weights"], "members": t.get("members", 1)},
                                    "teacher.weights", device)
        teacher = (teacher_model, _input_norm(t["normalization"]))
    return Checkpoint(model=model, norm=norm, meta=meta, path=directory, teacher=teacher)


def _load_model(directory: Path, meta: dict[str, Any], key: str, device: str) -> nn.Module:
    """The network ``meta["model"]`` names with the verified weights ``meta["weights"]`` (``key`` in errors)."""
    model = build_checkpoint_model(meta, directory / META_FILE)
    state = _read_weights(directory, meta["weights"], key)
    file = directory / meta["weights"]["file"]
    _check_state(file, meta["model"]["name"], state, model.state_dict())
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{file}: {len(bad)} tensors hold NaN or infinity (e.g. {bad[0]}): the "
            f"model diverged in training. Train again with a lower learning rate; this one cannot give predictions."
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def _input_norm(norm_meta: dict[str, Any]) -> InputNorm:
    """The :class:`InputNorm` a ``normalization`` entry describes."""
    c = len(CHANNELS)
    return InputNorm(
        torch.tensor(norm_meta["mean"], dtype=torch.float32).reshape(1, c, 1, 1),
        torch.tensor(norm_meta["std"], dtype=torch.float32).reshape(1, c, 1, 1),
        recentre=norm_meta.get("kind") == "recentre",
    )


__all__ = [
    "CONFIG_FILE", "FORMAT_VERSION", "META_FILE", "TEACHER_WEIGHTS_FILE", "WEIGHTS_FILE", "Checkpoint",
    "CheckpointError", "CheckpointMeta", "CheckpointNotFoundError", "InferenceModel", "TeacherMeta",
    "build_checkpoint_model", "load_checkpoint", "make_meta", "read_meta", "save_checkpoint", "teacher_meta",
]

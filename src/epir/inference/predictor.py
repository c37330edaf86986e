"""Predicting the class of a new clip with a trained checkpoint: ``Predictor.load(DIR).predict(CLIP)``.

A clip (a video file, a folder of frame images, or a list of BGR frames) goes through the preprocessing the
checkpoint records (:class:`epir.preprocess.pipeline.PreprocessSettings`: face alignment, onset-to-apex optical
flow, the 28x28 u/v/strain map), then through the model with its input normalisation. Without an apex, the
apex is estimated (``apex_method``); without an onset, the first frame is the onset.

The model runs in PyTorch or in onnxruntime (``backend``; see :class:`Predictor`): both take the same map
and agree within 1e-4. onnxruntime runs EPIR about 5x faster at batch 1 (0.23 vs 1.24 ms alone on a 2-core
CPU), but without an ``epir export`` file it needs an in-memory export first (4-8 s), so ``auto`` uses it only
where that pays off.

Every problem with the input (a missing path, a video that cannot be opened, a clip without a face, the onset
after the apex, an index beyond the clip) is an :class:`~epir.errors.EpirError` with a message that names the
clip and what was expected.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from epir.data.transforms import mosaic
from epir.errors import ClipError, ConfigError, EpirError, ExportError
from epir.fileio import writable_parent
from epir.inference.checkpoint import Checkpoint, InferenceModel, load_checkpoint
from epir.inference.explain import explain_prediction
from epir.inference.runners import OnnxRunner, Runner, TorchRunner, torch_threads
from epir.preprocess.face import FaceAligner, five_points
from epir.preprocess.pipeline import ClipResult, PreprocessSettings, read_clip
from epir.preprocess.video import IMAGE_EXTS, VIDEO_EXTS

Clip = str | os.PathLike | Sequence[np.ndarray]


@dataclass
class Prediction:
    """The model's answer for one clip (or one flow map).

    Attributes:
        label: index of the predicted class.
        class_name: its name.
        probabilities: probability of every class, by name (they sum to 1).
        onset: 0-based index of the onset frame used (None for a map).
        apex: 0-based index of the apex frame used (None for a map).
        apex_estimated: whether the apex was estimated rather than given.
        timings: seconds per stage: ``read`` (decoding frames), ``face``, ``apex`` (when estimated), ``flow``,
            ``map``, ``model``, and ``total`` (the whole call).
        clip: the clip's path, when it was given as one.
        map: the model input, (3, size, size) u, v, strain at 0-255.
        face: the apex face crop the flow was computed on, BGR uint8 (crop_size, crop_size, 3).
        result: the preprocessing's full output (aligned faces, raw flow), for :meth:`Predictor.explain`.
        landmarks: the five points the mosaic input was built around, (5, 2), for a model trained on
            per-sample landmarks; None otherwise.
        backend: what ran the model: ``"torch"`` or ``"onnx"`` (onnxruntime).
    """

    label: int
    class_name: str
    probabilities: dict[str, float]
    onset: int | None = None
    apex: int | None = None
    apex_estimated: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    clip: str | None = None
    map: np.ndarray | None = field(default=None, repr=False)
    face: np.ndarray | None = field(default=None, repr=False)
    result: ClipResult | None = field(default=None, repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)
    backend: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays): clip, class, probabilities, onset, apex, timings in ms."""
        return {
            "clip": self.clip,
            "label": self.label,
            "class_name": self.class_name,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "onset": self.onset,
            "apex": self.apex,
            "apex_estimated": self.apex_estimated,
            "timings_ms": {k: round(v * 1000.0, 3) for k, v in self.timings.items()},
            "backend": self.backend,
        }

    def format(self) -> str:
        """A small table: the predicted class, then every class with its probability, most likely first."""
        lines = [f"prediction: {self.class_name}"]
        if self.onset is not None:
            how = "estimated" if self.apex_estimated else "given"
            lines.append(f"onset frame {self.onset}, apex frame {self.apex} ({how})")
        lines.append(f"{'class':<14} {'probability':>11}")
        for name, p in sorted(self.probabilities.items(), key=lambda kv: -kv[1]):
            lines.append(f"{name:<14} {p:>11.4f}" + ("  <" if name == self.class_name else ""))
        return "\n".join(lines)


def _settings(checkpoint: Checkpoint, overrides: PreprocessSettings | Mapping[str, Any] | None) -> PreprocessSettings:
    if isinstance(overrides, PreprocessSettings):
        return overrides
    values = {**checkpoint.preprocessing, **dict(overrides or {})}
    try:
        settings = PreprocessSettings.from_dict(values)
    except ConfigError as e:
        where = checkpoint.path / "checkpoint.json" if checkpoint.path else "the checkpoint"
        raise ConfigError(f"preprocessing settings ({where} and the overrides given): {e}") from None
    if settings.size != checkpoint.input_size:
        raise ConfigError(
            f"preprocessing size {settings.size} does not match the model's input size {checkpoint.input_size}; "
            "leave 'size' as the checkpoint records it."
        )
    return settings


#: The model backends of :class:`Predictor`.
BACKENDS = ("auto", "torch", "onnx")
#: With ``backend="auto"`` and no ONNX file, :meth:`Predictor.predict_folder` exports the model in memory and
#: switches to onnxruntime for a folder of at least this many clips. Measured on a 2-core CPU
#: (benchmarks/predict_latency.py): the export costs 4.4 s in a process that has imported the exporter (a fresh
#: ``epir predict --backend onnx`` takes 7.4 s longer than with torch); onnxruntime saves 1.1 ms per map alone,
#: 1.6-1.8 ms in the predict path (2.5 -> 0.9 ms), out of 40-175 ms per clip. So the export pays for itself after
#: about 2,500-4,500 clips.
AUTO_ONNX_MIN_CLIPS = 5000


class Predictor:
    """A trained model ready to predict clips, flow maps, or a folder of clips.

    Args:
        checkpoint: a loaded :class:`Checkpoint` (see :meth:`load`).
        preprocess: preprocessing settings, or a mapping of overrides of those the checkpoint records
            (e.g. ``{"align": False}`` for clips that are already face crops).
        aligner: a :class:`FaceAligner` to use instead of one built from the settings (e.g. with injected
            detector and landmark functions).
        threads: intra-op threads while the model runs: torch's (set for each call and restored after it) or
            onnxruntime's. The default, 1, is the fastest for a batch of one 28x28 map: with more threads they
            mostly wait on each other (on a loaded 2-core machine, 1 ms becomes over 100 ms). None: torch's
            current setting, or onnxruntime's default (all physical cores).
        backend: what runs the model (:attr:`backend` says which one does):

            - ``"torch"``: PyTorch.
            - ``"onnx"``: onnxruntime, on the ``onnx`` file when given, else on the model exported in memory
              with :func:`epir.inference.export.onnx_model` (4-8 s; nothing is written to disk). An error when
              onnxruntime (or, to export, onnx / onnxscript) is missing or the export fails.
            - ``"auto"`` (default): onnxruntime when it costs no export, i.e. an ``onnx`` file is given (and
              onnxruntime imports); otherwise PyTorch, and :meth:`predict_folder` exports and switches to
              onnxruntime for a folder of :data:`AUTO_ONNX_MIN_CLIPS` clips or more. Why (EPIR, 2-core CPU):
              onnxruntime saves 1.6-1.8 ms per clip (the model stage of the predict path: PyTorch 2.5 ms,
              onnxruntime 0.9 ms) out of 40-175 ms (face and flow), while the export costs 4-8 s: a one-off
              ``epir predict`` takes 2.6 s with PyTorch, 10 s with an export, 2.4 s with an exported file, and
              a folder gains only from thousands of clips. A long-lived process should give an ``epir export``
              file (``onnx=FILE``: 0.02-0.1 s to load) or ask for ``backend="onnx"``. Anything that keeps
              onnxruntime from running falls back to PyTorch, and :attr:`backend_note` says why.
        onnx: an ONNX file written by ``epir export`` for this checkpoint, run instead of exporting. It must
            carry this checkpoint's weights hash (``epir.weights_sha256``) and model description: a file
            from another checkpoint is an :class:`~epir.inference.export.ExportError`, whatever the backend.

    Attributes:
        backend: the backend in use, ``"torch"`` or ``"onnx"`` (each :class:`Prediction` records its own).
        backend_note: how it was chosen (e.g. ``"onnxruntime, exported in memory"``).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        preprocess: PreprocessSettings | Mapping[str, Any] | None = None,
        aligner: FaceAligner | None = None,
        threads: int | None = 1,
        backend: str = "auto",
        onnx: str | os.PathLike | None = None,
    ) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}.")
        if backend not in BACKENDS:
            raise ConfigError(f"Unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
        if onnx is not None and backend == "torch":
            raise ConfigError("An ONNX file runs with onnxruntime: give backend 'onnx' or 'auto' with it "
                              "(or leave the file out to run PyTorch).")
        self.checkpoint = checkpoint
        self.settings = _settings(checkpoint, preprocess)
        self._aligner = aligner
        self.threads = threads
        self.model: InferenceModel = checkpoint.inference_model()
        self.device = next(iter(self.model.parameters()), torch.empty(0)).device
        self.requested_backend = backend
        self.runner: Runner = TorchRunner(self.model, threads)
        self.backend_note = "PyTorch" if backend == "torch" else (
            "PyTorch (auto: no ONNX file given, and an in-memory export costs seconds for ~1 ms per prediction)")
        self._auto_export_tried = False
        if backend == "onnx" or onnx is not None:
            self.use_onnx(onnx, required=backend == "onnx")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        preprocess: PreprocessSettings | Mapping[str, Any] | None = None,
        aligner: FaceAligner | None = None,
        device: str = "cpu",
        threads: int | None = 1,
        backend: str = "auto",
        onnx: str | os.PathLike | None = None,
    ) -> Predictor:
        """Load a checkpoint directory written by ``epir train`` (validated; nothing is unpickled).

        ``backend`` (``"auto"``, ``"torch"`` or ``"onnx"``) and ``onnx`` (an ``epir export`` file of this
        checkpoint): see :class:`Predictor`.
        """
        return cls(load_checkpoint(path, device=device), preprocess=preprocess, aligner=aligner, threads=threads,
                   backend=backend, onnx=onnx)

    def __repr__(self) -> str:
        where = f" from {self.checkpoint.path}" if self.checkpoint.path else ""
        teacher = self.checkpoint.info.teacher
        mixed = f", mixed with {teacher.model_name!r} at {teacher.mix:g}" if teacher is not None else ""
        return (f"Predictor({self.checkpoint.model_name!r}{mixed}{where}, classes={list(self.class_names)}, "
                f"backend={self.backend!r})")

    def use_onnx(self, onnx: str | os.PathLike | None = None, *, required: bool = True) -> bool:
        """Run the model with onnxruntime from now on: on the ``onnx`` file (checked against the checkpoint),
        or on the model exported in memory. Its outputs are compared with PyTorch's on random maps (1e-4).

        Args:
            onnx: an ``epir export`` file of this checkpoint, or None to export in memory (a few seconds).
            required: raise when onnxruntime cannot be used; otherwise stay on PyTorch and say why in
                :attr:`backend_note`. A file from another checkpoint is an error either way.

        Returns:
            Whether onnxruntime is now in use.

        Raises:
            ExportError: (``required``) onnxruntime, onnx or onnxscript missing, the export failed, or the graph
                does not reproduce PyTorch; and always: ``onnx`` belongs to another checkpoint.
            ConfigError: (``required``) the model is not on the CPU.
        """
        def unavailable(why: str, error: Exception | None = None) -> bool:
            if required:
                if error is not None:
                    raise error
                raise ConfigError(why)
            self.backend_note = f"PyTorch (auto: onnxruntime not used: {why})"
            return False

        if self.device.type != "cpu":
            return unavailable(f"the model is on {self.device}; the onnx backend runs on the CPU (device='cpu')")
        try:
            import onnxruntime  # noqa: F401, PLC0415  (optional dependency, imported when used)
        except ImportError as e:
            return unavailable(f"onnxruntime is not installed ({e}): pip install 'epir[export]'",
                               ExportError(f"The onnx backend needs onnxruntime ({e}): pip install 'epir[export]'."))
        if onnx is not None:  # a missing file, or one of another checkpoint, is an error whatever `required` says
            runner, note = OnnxRunner.from_file(self.checkpoint, onnx, self.threads)
        else:
            try:
                runner, note = OnnxRunner.exported(self.checkpoint, self.threads)
            except ExportError as e:
                return unavailable(str(e), e)
        try:
            runner.check(self.checkpoint, note, self.threads)
        except ExportError as e:
            return unavailable(str(e), e)
        self.runner = runner
        self.backend_note = f"{note} (auto)" if self.requested_backend == "auto" else note
        return True

    @property
    def backend(self) -> str:
        """The backend in use: ``"torch"`` or ``"onnx"`` (its :attr:`runner`'s name)."""
        return self.runner.name

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class of each output, in order."""
        return self.checkpoint.class_names

    @property
    def aligner(self) -> FaceAligner | None:
        """The face aligner (built on first use, then reused: dlib's models load once); None without alignment."""
        if not self.settings.align:
            return None
        if self._aligner is None:
            self._aligner = self.settings.aligner()
        return self._aligner

    def torch_threads(self) -> contextlib.AbstractContextManager[int]:
        """Run the block with ``self.threads`` torch intra-op threads, then restore the previous count."""
        return torch_threads(self.threads)

    # ---------------------------------------------------------------------------------------------- maps

    def network_input(self, maps: np.ndarray | torch.Tensor, landmarks: np.ndarray | None = None) -> torch.Tensor:
        """Flow maps as the tensor :attr:`model` takes: (N, 3, size, size) float on the model's device.

        Args:
            maps: (3, size, size) or (N, 3, size, size), u, v, strain at 0-255.
            landmarks: HTNet's five points on the map, (5, 2) or (N, 5, 2) (x, y): needed, and only used, when
                the checkpoint's mosaic input was trained on per-sample landmarks (the mosaic is built here).
        """
        x = maps.detach().float() if torch.is_tensor(maps) else torch.from_numpy(np.asarray(maps, dtype=np.float32))
        size = self.checkpoint.input_size
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            last = x.ndim == 4 and tuple(x.shape[1:]) == (size, size, 3)
            raise ConfigError(
                f"Expected flow maps of shape (3, {size}, {size}) or (N, 3, {size}, {size}) (u, v, strain at 0-255), "
                f"got {tuple(x.shape)}" + ("; these are channels last: pass maps.transpose(2, 0, 1) (one map) or "
                                           "maps.transpose(0, 3, 1, 2) (a batch)." if last else ".")
            )
        if not torch.isfinite(x).all():
            raise ConfigError("The flow map holds NaN or infinite values; expected u, v, strain at 0-255.")
        if self.checkpoint.per_clip_landmarks:
            if landmarks is None:
                raise ConfigError(
                    "This model's mosaic input was trained around each clip's own landmarks, so a flow map alone is "
                    "not enough: predict the clip (with face alignment), or give the five points (landmarks=...)."
                )
            x = mosaic(x, np.asarray(landmarks, dtype=np.float64))
        return x.to(self.device)

    def predict_proba(self, maps: np.ndarray | torch.Tensor, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities (N, num_classes) of flow maps (N, 3, size, size), u, v, strain at 0-255.

        ``landmarks``: see :meth:`network_input` (only for a mosaic trained on per-sample landmarks).
        """
        return self.runner.probabilities(self.network_input(maps, landmarks))

    def _prediction(self, probs: np.ndarray, **kwargs: Any) -> Prediction:
        label = int(np.argmax(probs))
        return Prediction(label=label, class_name=self.class_names[label],
                          probabilities={c: float(p) for c, p in zip(self.class_names, probs)},
                          backend=self.backend, **kwargs)

    def predict_map(self, flow_map: np.ndarray | torch.Tensor, landmarks: np.ndarray | None = None) -> Prediction:
        """Predict one flow map (3, size, size), u, v, strain at 0-255 (e.g. a composite-set sample).

        ``landmarks``: see :meth:`network_input` (only for a mosaic trained on per-sample landmarks).
        """
        t = time.perf_counter()
        probs = self.predict_proba(flow_map, landmarks)[0]
        dt = time.perf_counter() - t
        return self._prediction(probs, timings={"model": dt, "total": dt}, map=np.asarray(flow_map),
                                landmarks=None if landmarks is None else np.asarray(landmarks))

    def predict_map_file(self, path: str | os.PathLike) -> Prediction:
        """Predict a flow-map image in the composite set's layout (RGB = u, v, strain, 8-bit, size x size)."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise ClipError(f"Flow-map image {p} does not exist.")
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ClipError(f"{p} cannot be read as an image; expected an 8-bit RGB flow map (u, v, strain).")
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ClipError(f"Flow-map image {p} has shape {img.shape} and dtype {img.dtype}; expected an 8-bit "
                            f"3-channel image (RGB = u, v, strain), as the dataset loader reads.")
        size = self.checkpoint.input_size
        if img.shape[:2] != (size, size):
            raise ClipError(f"Flow-map image {p} is {img.shape[1]}x{img.shape[0]}; the model reads {size}x{size} maps "
                            "(RGB = u, v, strain, as in the MEGC2019 composite set).")
        pred = self.predict_map(img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))  # BGR read -> u, v, strain
        pred.clip = str(p)
        return pred

    # ---------------------------------------------------------------------------------------------- clips

    def preprocess(
        self, clip: Clip, onset: int | None = None, apex: int | None = None
    ) -> tuple[ClipResult, np.ndarray, float]:
        """Run the preprocessing on a clip.

        Returns:
            Its :class:`ClipResult`, the apex face crop (BGR, ``crop_size`` square) and the seconds spent
            reading frames.

        Args:
            clip: a video file, a folder of frame images, or a sequence of BGR uint8 frames.
            onset: 0-based onset index (default 0, the first frame).
            apex: 0-based apex index (default: estimated among the frames after the onset).
        """
        t = time.perf_counter()
        loaded = read_clip(clip, onset, apex)
        read = time.perf_counter() - t
        result = loaded.run(self.settings, self.aligner)
        if result.apex_face is not None:
            face = result.apex_face.image
        else:
            face = cv2.resize(loaded.frames[1 if loaded.original else result.apex],
                              (self.settings.crop_size,) * 2, interpolation=cv2.INTER_AREA)
        return result, face, read

    def predict(self, clip: Clip, onset: int | None = None, apex: int | None = None) -> Prediction:
        """Predict the class of one clip.

        Args:
            clip: a video file, a folder of frame images (sorted by the number in their names), or a sequence
                of BGR uint8 frames.
            onset: 0-based index of the onset frame (default 0).
            apex: 0-based index of the apex frame (default: estimated with the settings' ``apex_method``).

        Returns:
            A :class:`Prediction` (class, probabilities, the onset and apex used, timings per stage).

        Raises:
            ClipError: a missing or unreadable clip, no face, the onset not before the apex, an index beyond
                the clip (subclasses say which).
        """
        t0 = time.perf_counter()
        result, face, read = self.preprocess(clip, onset, apex)
        landmarks = self.clip_landmarks(result) if self.checkpoint.per_clip_landmarks else None
        t = time.perf_counter()
        probs = self.predict_proba(result.map, landmarks)[0]
        model = time.perf_counter() - t
        timings = {"read": read, **result.timings, "model": model, "total": time.perf_counter() - t0}
        return self._prediction(
            probs, onset=result.onset, apex=result.apex, apex_estimated=result.apex_estimated, timings=timings,
            clip=str(clip) if isinstance(clip, (str, os.PathLike)) else None, map=result.map, face=face, result=result,
            landmarks=landmarks,
        )

    def clip_landmarks(self, result: ClipResult) -> np.ndarray:
        """HTNet's five points of a clip's onset face on the map (as ``epir preprocess`` writes them), (5, 2)."""
        if result.onset_face is None:
            raise ConfigError(
                "This model's mosaic input needs each clip's face landmarks, so face alignment must stay on "
                "(leave preprocess align=true: no --no-align)."
            )
        return five_points(result.onset_face.landmarks) * (self.settings.size / self.settings.crop_size)

    def predict_folder(
        self,
        folder: str | os.PathLike,
        csv_path: str | os.PathLike | None = None,
        *,
        onset: int | None = None,
        apex: int | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Predict every clip in ``folder``: each video file and each sub-folder of frame images.

        A clip that cannot be processed (no face, unreadable, ...) gets its error in the ``error`` column
        instead of stopping the batch. With ``backend="auto"`` and at least :data:`AUTO_ONNX_MIN_CLIPS` clips,
        the model is exported in memory first and run with onnxruntime (see :class:`Predictor`).

        Args:
            folder: the folder of clips.
            csv_path: where to write the table as CSV (optional).
            onset: onset index for every clip (default 0).
            apex: apex index for every clip (default: estimated per clip).
            progress: show a progress bar.

        Returns:
            One row per clip, sorted by name: ``clip``, ``predicted``, ``prob_<class>`` for every class,
            ``onset``, ``apex``, ``apex_estimated``, ``ms`` (time of the whole prediction), ``error``.
        """
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ClipError(
                f"{root} is not a folder; predict_folder (--csv) predicts every clip (video file or frame folder) in "
                "a folder."
            )
        out = None if csv_path is None else writable_parent(csv_path, "predictions table")  # before the clips
        clips = list_clips(root)
        if not clips:
            raise ClipError(
                f"{root} holds no clips: expected video files ({', '.join(VIDEO_EXTS)}) or sub-folders of frame "
                "images. For a single clip given as a folder of frames, use predict (no --csv)."
            )
        if (self.requested_backend == "auto" and self.backend == "torch" and not self._auto_export_tried
                and len(clips) >= AUTO_ONNX_MIN_CLIPS):
            self._auto_export_tried = True
            self.use_onnx(None, required=False)
        rows = []
        for clip in tqdm(clips, desc="predict", unit="clip", disable=not progress):
            row: dict[str, Any] = {"clip": clip.name}
            try:
                p = self.predict(clip, onset=onset, apex=apex)
                row.update(predicted=p.class_name, **{f"prob_{c}": round(v, 6) for c, v in p.probabilities.items()},
                           onset=p.onset, apex=p.apex, apex_estimated=p.apex_estimated,
                           ms=round(p.timings["total"] * 1000.0, 2), error="")
            except EpirError as e:
                row.update(predicted="", **{f"prob_{c}": np.nan for c in self.class_names}, onset=None, apex=None,
                           apex_estimated=None, ms=None, error=f"{type(e).__name__}: {e}")
            rows.append(row)
        df = pd.DataFrame(rows)
        if out is not None:
            df.to_csv(out, index=False)
        return df

    def explain(self, prediction: Prediction, path: str | os.PathLike) -> Path:
        """Write the explanation PNG of ``prediction`` (see :func:`epir.inference.explain.explain_prediction`)."""
        return explain_prediction(self, prediction, path)


def list_clips(folder: str | os.PathLike) -> list[Path]:
    """The clips in a folder: video files (:data:`VIDEO_EXTS`) and sub-folders holding frame images, by name."""
    root = Path(folder)
    out = []
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            out.append(p)
        elif p.is_dir() and any(q.is_file() and q.suffix.lower() in IMAGE_EXTS for q in p.iterdir()):
            out.append(p)
    return out


__all__ = ["AUTO_ONNX_MIN_CLIPS", "BACKENDS", "Clip", "Prediction", "Predictor", "list_clips"]

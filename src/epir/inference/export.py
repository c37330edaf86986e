"""``epir export``: a checkpoint's model as ONNX, input normalisation and input transform included.

The exported graph is :class:`~epir.inference.checkpoint.InferenceModel`: it takes the same input as the
training data and :meth:`Predictor.predict_map`, ``x`` float32 ``(batch, 3, 28, 28)``, channels u, v, strain
at 0-255, and returns ``logits`` and ``probabilities`` ``(batch, num_classes)``; the batch axis is dynamic.
Class names and the preprocessing settings are written into the ONNX file's metadata (``epir.class_names``,
``epir.preprocessing``, ``epir.checkpoint``, JSON strings; ``epir.input`` says what ``x`` is), and the SHA-256
of the checkpoint's ``model.safetensors`` (``epir.weights_sha256``; a teacher's is in ``epir.checkpoint``'s
``teacher`` entry, and the graph holds both networks and their blend): :func:`verify_onnx` checks a file against
a checkpoint with it, so that ``Predictor.load(DIR, onnx=FILE)`` refuses a file exported from another
checkpoint. :func:`onnx_model` builds the graph in memory (what the Predictor's ``onnx`` backend runs when no
file is given); :func:`export_onnx` writes it to a file. A model whose
mosaic input was trained on per-sample landmarks takes the mosaic instead (built from each clip's five points
with :func:`epir.data.transforms.mosaic`), since the points are not part of the map.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter, the default since
PyTorch 2.9; the TorchScript one is deprecated). EPIR's token merging (argsort, gather, scatter-add) and DTSM
(top-k) export as they are. One detail: ITALS builds its diagonal mask with ``fill_diagonal_``, which has no
ONNX conversion, and caches it per token count; a forward pass before the export fills the caches, so the
graph holds the masks as constants (the token counts do not depend on the batch size).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from epir.errors import ExportError
from epir.fileio import writable_parent
from epir.inference.checkpoint import Checkpoint, load_checkpoint

#: Default ONNX opset (ScatterElements with reduction, TopK, LayerNormalization all available).
OPSET = 18


class _WithProbabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, logits.softmax(dim=-1)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well onnxruntime reproduces PyTorch.

    Attributes:
        path: the ONNX file.
        bytes: its size.
        opset: the ONNX opset.
        max_abs_diff: the largest |onnxruntime - PyTorch| over the logits of ``check_samples`` random maps
            (None when not checked).
        check_samples: how many random maps were compared.
    """

    path: Path
    bytes: int
    opset: int
    max_abs_diff: float | None = None
    check_samples: int = 0


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, attributes set during tracing)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                              "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def random_maps(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """``n`` random flow maps (n, 3, size, size) on the 0-255 scale, each channel min-max spread to 0-255."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen) * 255.0
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return (x - lo) / (hi - lo) * 255.0


def onnx_session(model: str | os.PathLike | bytes, threads: int | None = None) -> Any:  # ort.InferenceSession
    """An onnxruntime CPU session for an ONNX file or the serialised model bytes.

    ``threads``: intra-op threads (one inter-op thread); None: onnxruntime's default (all physical cores).
    """
    try:
        import onnxruntime as ort  # noqa: PLC0415 (optional dependency, imported when used)
    except ImportError as e:
        raise ExportError("onnxruntime is not installed: pip install 'epir[export]' (or onnxruntime).") from e
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / ... types
        where = "the exported model" if isinstance(model, bytes) else str(model)
        raise ExportError(
            f"onnxruntime cannot load {where} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "give a file written by `epir export`."
        ) from None


def compare_onnx(
    checkpoint: Checkpoint, path: str | os.PathLike | bytes | None, *, samples: int = 8, seed: int = 0,
    session: Any = None,
) -> float:
    """Max |onnxruntime - PyTorch| over the logits of ``samples`` random maps (batches of 1 and of the rest).

    ``path``: the ONNX file or model bytes (ignored when an onnxruntime ``session`` of it is given).
    """
    model = checkpoint.inference_model()
    if session is None:
        if path is None:
            raise ExportError("compare_onnx needs the ONNX file (path) or an onnxruntime session of it.")
        session = onnx_session(path)
    x = random_maps(samples, checkpoint.input_size, seed)
    with torch.inference_mode():
        ref = model(x).numpy()
    parts = [x[:1], x[1:]] if samples > 1 else [x]
    out = np.concatenate([session.run(["logits"], {"x": p.numpy()})[0] for p in parts])
    return float(np.abs(out - ref).max())


def weights_sha256(checkpoint: Checkpoint) -> str | None:
    """The SHA-256 of the checkpoint's ``model.safetensors`` as ``checkpoint.json`` records it (None if absent)."""
    weights = checkpoint.meta.get("weights")
    value = weights.get("sha256") if isinstance(weights, dict) else None
    return str(value) if value else None


def _graph_keys(checkpoint: Checkpoint) -> tuple[str, ...]:
    """The ``checkpoint.json`` entries the graph depends on besides the model's weights: model, input and
    normalisation, and the teacher mixed into the predictions (its weights' SHA-256 included) when there is one.
    """
    return ("model", "input", "teacher") if "teacher" in checkpoint.meta else ("model", "input")


def _graph_meta(checkpoint: Checkpoint) -> dict:
    """What of ``checkpoint.json`` the graph depends on besides the weights (see :func:`_graph_keys`)."""
    return {k: checkpoint.meta[k] for k in _graph_keys(checkpoint)}


def onnx_model(checkpoint: Checkpoint | str | os.PathLike, *, opset: int = OPSET) -> Any:  # onnx.ModelProto
    """The checkpoint's model (input transform and normalisation included) as an in-memory ONNX ``ModelProto``,
    with the epir metadata (see the module docstring). Takes a few seconds (``torch.export`` traces the model).

    Raises:
        ExportError: onnx or onnxscript is missing, or the exporter failed.
    """
    try:
        import onnx  # noqa: F401, PLC0415  (optional dependency, imported when used)
        import onnxscript  # noqa: F401, PLC0415  (optional dependency: the exporter needs it)
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx and onnxscript ({e}): pip install 'epir[export]'.") from e
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    module = _WithProbabilities(ckpt.inference_model()).eval()
    x = random_maps(2, ckpt.input_size)
    with torch.inference_mode():
        module(x)  # fills lazily built constants (EPIR's ITALS masks): see the module docstring
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module, (x,), None, dynamo=True, input_names=["x"], output_names=["logits", "probabilities"],
                dynamic_shapes={"x": {0: batch}}, opset_version=opset, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean the same to a user
        raise ExportError(
            f"torch.onnx.export failed for model {ckpt.model_name!r} ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "Please report it with the checkpoint's checkpoint.json."
        ) from e
    meta = {
        "epir.class_names": json.dumps(list(ckpt.class_names)),
        "epir.preprocessing": json.dumps(ckpt.preprocessing),
        "epir.checkpoint": json.dumps({k: ckpt.meta[k] for k in (*_graph_keys(ckpt), "epir_version", "created")}),
        "epir.weights_sha256": weights_sha256(ckpt) or "",
        "epir.input": ("mosaic: HTNet's four regions around the clip's five landmarks (epir.data.transforms.mosaic) "
                       "of the u, v, strain map at 0-255" if ckpt.per_clip_landmarks else
                       "u, v, strain flow map at 0-255, channels first"),
    }
    if program is None:
        raise ExportError("torch.onnx.export returned no program; the model cannot be exported.")
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"epir {ckpt.model_name}: input x (batch, 3, {ckpt.input_size}, {ckpt.input_size}) u, v, "
                        "strain at 0-255; outputs logits and probabilities (batch, classes)")
    return proto


def verify_onnx(checkpoint: Checkpoint, metadata: dict[str, str], file: str | os.PathLike) -> None:
    """Check that an ONNX file was exported from ``checkpoint``: the same weights (SHA-256 of model.safetensors),
    model, input and normalisation, and class names.

    Args:
        checkpoint: the loaded checkpoint.
        metadata: the file's metadata (``session.get_modelmeta().custom_metadata_map``).
        file: the file's name, for the messages.

    Raises:
        ExportError: the file carries no epir weights hash (exported by an older epir, or not by epir), or it
            belongs to another checkpoint (or another version of it).
    """
    where = checkpoint.path if checkpoint.path is not None else "the checkpoint"
    again = f"write it again with `epir export --checkpoint {where} --onnx {file}`"
    recorded = metadata.get("epir.weights_sha256")
    own = weights_sha256(checkpoint)
    if not recorded:
        raise ExportError(
            f"{file} carries no epir.weights_sha256 in its metadata (it was exported by an older epir, or not by "
            f"epir), so it cannot be checked against {where}; {again}."
        )
    if own is None:
        raise ExportError(f"{where} records no SHA-256 of its weights, so {file} cannot be checked against it.")
    if recorded != own:
        raise ExportError(
            f"{file} was exported from other weights than {where} (weights SHA-256 {recorded[:12]}... in the file, "
            f"{own[:12]}... in checkpoint.json): it belongs to another checkpoint or an earlier training. Give the "
            f"matching file, or {again}."
        )
    try:
        graph = json.loads(metadata.get("epir.checkpoint", ""))
        names = json.loads(metadata.get("epir.class_names", ""))
    except json.JSONDecodeError:
        graph, names = None, None
    if not isinstance(graph, dict) or {k: graph.get(k) for k in _graph_keys(checkpoint)} != _graph_meta(checkpoint) or (
        names != list(checkpoint.class_names)
    ):
        raise ExportError(
            f"{file} has the weights of {where} but another model description, input normalisation or class "
            f"names (checkpoint.json was changed after the export); {again}."
        )


def export_onnx(
    checkpoint: Checkpoint | str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = OPSET,
    check: bool = True,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export a checkpoint's model (with its input transform and normalisation) to one ONNX file.

    Args:
        checkpoint: a :class:`Checkpoint` or its directory.
        path: the ``.onnx`` file to write (a single file: the weights are embedded, not external data).
        opset: ONNX opset version.
        check: run the file with onnxruntime on random maps and compare with PyTorch.
        tolerance: largest accepted |difference| of the logits when checking.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ExportError: the export failed, or onnxruntime's output differs from PyTorch's by more than
            ``tolerance``.
    """
    try:
        import onnx  # noqa: PLC0415 (optional dependency, imported when used)
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx and onnxscript ({e}): pip install 'epir[export]'.") from e
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    out = Path(path).expanduser()
    if out.is_dir():
        raise ExportError(f"ONNX file {out} (--onnx) is a directory; give a file name such as {out / 'model.onnx'}.")
    writable_parent(out, "ONNX file")
    proto = onnx_model(ckpt, opset=opset)
    onnx.save_model(proto, str(out))
    report = ExportReport(path=out, bytes=out.stat().st_size, opset=opset)
    if check:
        report.max_abs_diff = compare_onnx(ckpt, out)
        report.check_samples = 8
        if not report.max_abs_diff <= tolerance:
            raise ExportError(
                f"{out}: onnxruntime's logits differ from PyTorch's by up to {report.max_abs_diff:.3g} "
                f"(tolerance {tolerance:g}); the exported model is not faithful. Please report it."
            )
    return report


__all__ = [
    "OPSET", "ExportError", "ExportReport", "compare_onnx", "export_onnx", "onnx_model", "onnx_session", "random_maps",
    "verify_onnx", "weights_sha256",
]

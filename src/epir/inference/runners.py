"""What runs a model on its network input: PyTorch or onnxruntime, behind one interface (:class:`Runner`).

:class:`~epir.inference.Predictor` prepares the input (checks, mosaic, device) and hands it to its runner; which
runner it uses is its ``backend``. A runner returns class probabilities as a NumPy array (N, num_classes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from epir.errors import ExportError
from epir.inference import export as onnx_export
from epir.inference.checkpoint import Checkpoint
from epir.profiling import torch_threads


class Runner(Protocol):
    """Runs a model: :meth:`probabilities` of network input ``x`` (N, 3, size, size), normalised inside."""

    #: ``"torch"`` or ``"onnx"``.
    name: str

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Class probabilities (N, num_classes) of the maps ``x`` (0-255, as the inference model takes them)."""
        ...


class TorchRunner:
    """A PyTorch module (the checkpoint's inference model) run in inference mode with ``threads`` threads."""

    name = "torch"

    def __init__(self, model: nn.Module, threads: int | None = 1) -> None:
        self.model = model
        self.threads = threads

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Softmax of the model's logits, on the CPU as NumPy."""
        with torch_threads(self.threads), torch.inference_mode():
            return torch.softmax(self.model(x), dim=-1).cpu().numpy()


class OnnxRunner:
    """An onnxruntime session of an ``epir export`` graph (outputs ``logits`` and ``probabilities``)."""

    name = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session

    @classmethod
    def from_file(cls, checkpoint: Checkpoint, file: str | os.PathLike, threads: int | None = 1
                  ) -> tuple[OnnxRunner, str]:
        """A session of an ``epir export`` file, checked to belong to ``checkpoint`` (weights hash); with a note."""
        path = Path(file).expanduser()
        if not path.is_file():
            raise ExportError(f"ONNX file {path} does not exist; write it with `epir export --checkpoint "
                              f"{checkpoint.path or 'DIR'} --onnx {path}`, or leave it out.")
        session = onnx_export.onnx_session(path, threads)
        onnx_export.verify_onnx(checkpoint, session.get_modelmeta().custom_metadata_map, path)
        return cls(session), f"onnxruntime, {path}"

    @classmethod
    def exported(cls, checkpoint: Checkpoint, threads: int | None = 1) -> tuple[OnnxRunner, str]:
        """A session of ``checkpoint``'s model exported in memory (a few seconds); with a note."""
        try:
            with torch_threads(threads):
                graph = onnx_export.onnx_model(checkpoint).SerializeToString()
                session = onnx_export.onnx_session(graph, threads)
        except ExportError:
            raise
        except Exception as e:  # anything else the tracing or serialising raises: same meaning to a user
            raise ExportError(f"The in-memory ONNX export failed ({type(e).__name__}: {e}); use backend "
                              f"'torch'.") from e
        return cls(session), "onnxruntime, exported in memory"

    def check(self, checkpoint: Checkpoint, note: str, threads: int | None = 1, tolerance: float = 1e-4) -> None:
        """Compare with PyTorch on random maps; an ExportError when the logits differ by more than ``tolerance``."""
        with torch_threads(threads):
            diff = onnx_export.compare_onnx(checkpoint, None, samples=4, session=self.session)
        if not diff <= tolerance:
            raise ExportError(f"onnxruntime's logits differ from PyTorch's by up to {diff:.3g} (tolerance "
                              f"{tolerance:g}) with {note}; please report it, and use backend 'torch' meanwhile.")

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """The graph's ``probabilities`` output."""
        return self.session.run(["probabilities"], {"x": np.ascontiguousarray(x.detach().cpu().numpy())})[0]


__all__ = ["OnnxRunner", "Runner", "TorchRunner", "torch_threads"]

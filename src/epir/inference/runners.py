"""What runs a model on its network input: PyTorch or onnxruntime, behind one interface (:class:`Runner`).

:class:`~epir.inference.Predictor` prepares the input (checks, mosaic, device) and hands it to its runner; which
runner it uses is its ``backend``. A runner returns class probabilities as a NumPy array (N, num_classes).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class Runner(Protocol):
    """Runs a model: :meth:`probabilities` of network input ``x`` (N, 3, size, size), normalised inside."""

    #: ``"torch"`` or ``"onnx"``.
    name: str

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Class probabilities (N, num_classes) of the maps ``x`` (0-255, as the inference model takes them)."""
        ...


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


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

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """The graph's ``probabilities`` output."""
        return self.session.run(["probabilities"], {"x": np.ascontiguousarray(x.detach().cpu().numpy())})[0]


__all__ = ["OnnxRunner", "Runner", "TorchRunner", "torch_threads"]

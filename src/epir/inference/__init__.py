"""Using a trained model: train on every subject and save a checkpoint, predict a new clip, explain, export.

::

    from epir.inference import Predictor, train_checkpoint
    ckpt = train_checkpoint(epir.make_config("epir", "megc2019", root=...), "models/epir")   # epir train
    predictor = Predictor.load("models/epir")
    p = predictor.predict("clip.mp4")               # or a frame folder, or a list of frames; onset/apex optional
    print(p.class_name, p.probabilities)
    predictor.explain(p, "clip.png")                # epir predict --explain
    export_onnx("models/epir", "epir.onnx")         # epir export
"""
from __future__ import annotations

import importlib
from typing import Any

from epir.inference.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFoundError,
    InferenceModel,
    load_checkpoint,
    save_checkpoint,
)

_LAZY = {
    "train_checkpoint": "epir.inference.training",
    "Predictor": "epir.inference.predictor",
    "Prediction": "epir.inference.predictor",
    "export_onnx": "epir.inference.export",
    "ExportError": "epir.inference.export",
    "explain_prediction": "epir.inference.explain",
}


def __getattr__(name: str) -> Any:  # lazy: the preprocessing, matplotlib and onnx are imported on first use
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'epir.inference' has no attribute {name!r}")


__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointNotFoundError", "ExportError", "InferenceModel", "Prediction",
    "Predictor", "explain_prediction", "export_onnx", "load_checkpoint", "save_checkpoint", "train_checkpoint",
]

"""epir: micro-expression recognition built around EPIR, with honest leave-one-subject-out evaluation.

The public API::

    import epir
    ds = epir.load_dataset("megc2019", root="...")          # or "synthetic"
    cfg = epir.make_config("epir", "megc2019", seeds=(0, 1, 2))
    results = epir.run_loso(cfg, dataset=ds, out_dir="runs/x")
    model = epir.create_model("epir")
    predictor = epir.Predictor.load("checkpoints/epir")     # a checkpoint of `epir train`
    print(predictor.predict("clip.mp4").probabilities)
    epir.compare_runs("runs/x", "runs/y")                    # A - B with a paired subject-bootstrap interval
"""
from typing import Any

from epir._version import __version__
from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from epir.data import FlowDataset, list_datasets, load_dataset
from epir.engine.evaluate import compare_runs, evaluate_megc_log, evaluate_run_dir
from epir.engine.loso import make_config, run_loso
from epir.engine.metrics import confusion_matrix, megc_scores
from epir.engine.uncertainty import bootstrap_ci, paired_difference
from epir.errors import ConfigError, DatasetError, DatasetNotFoundError, EpirError, UnknownNameError
from epir.models import create_model, default_recipe, list_models


def __getattr__(name: str) -> Any:  # lazy: the inference stack imports the face and flow pipeline on first use
    if name in ("Predictor", "Prediction", "train_checkpoint", "load_checkpoint"):
        import epir.inference  # noqa: PLC0415 (lazy attribute: the inference stack loads on first use)

        return getattr(epir.inference, name)
    raise AttributeError(f"module 'epir' has no attribute {name!r}")


__all__ = [
    "ConfigError", "DataConfig", "DatasetError", "DatasetNotFoundError", "EpirError", "EvalConfig",
    "FlowDataset", "ModelConfig", "Prediction", "Predictor", "RunConfig", "TrainConfig", "UnknownNameError",
    "__version__",
    "bootstrap_ci", "compare_runs", "confusion_matrix", "create_model", "default_recipe", "evaluate_megc_log",
    "evaluate_run_dir", "list_datasets", "list_models", "load_checkpoint", "load_dataset", "make_config",
    "megc_scores", "paired_difference", "run_loso", "train_checkpoint",
]

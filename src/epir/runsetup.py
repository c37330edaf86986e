"""One home for run setup: (recipe, config file, flags, ``--set``) -> :class:`~epir.config.RunConfig`, and the data
a run uses (load, subset, input transform, checks against the model).

``epir loso``, ``demo``, ``train``, ``ablate`` and ``compare`` resolve their configuration here, in one order:

1. the model's default recipe (or a named one: ``recipe``), or a config file (``config_file``, e.g. a run's own
   ``config.yaml``);
2. the values of the command's flags (:data:`FLAG_KEYS`: one config key each; None where a flag was not given);
3. ``seeds``, ``folds``, ``oracle_epoch``;
4. ``KEY=VALUE`` overrides (``--set``), in order.

The shared option set of every training command is :func:`add_run_options`; :func:`config_from_args` applies the
order above to its parsed arguments. Python callers use :func:`make_config` or :func:`resolve_run_config`.
Execution settings (device, threads, jobs, fold batching, Dask, outputs, where the data lives) are
:data:`EXECUTION_KEYS`: they may change when a run resumes; every other key is the evaluation protocol and may not.
The data itself may not change either: the run's fingerprint holds its digest (:mod:`epir.engine.runstore`).
"""
from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, apply_overrides, parse_key_values, set_value
from epir.data import FlowDataset, load_dataset
from epir.data.base import CHANNELS
from epir.data.transforms import apply_input_transform
from epir.errors import ConfigError, MapRangeWarning, closest, did_you_mean
from epir.models.factory import accepted_input_size, default_recipe, resolve_model_args

#: Command-line flags that set one config key each (flag dest, key).
FLAG_KEYS = (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "train.lr"),
             ("device", "eval.device"), ("threads", "eval.threads"), ("jobs", "eval.jobs"),
             ("subset", "data.subset"), ("dask_scheduler", "eval.dask_scheduler"), ("fold_batch", "eval.fold_batch"),
             ("tensorboard", "eval.tensorboard"))

#: Config keys that say how a run executes, not what it measures: they may differ when a run resumes.
EXECUTION_KEYS = frozenset({"eval.seeds", "eval.folds", "eval.device", "eval.threads", "eval.jobs",
                            "eval.dask_scheduler", "eval.fold_batch", "eval.report", "eval.tensorboard",
                            # the same folder given as ../x or /abs/x, or the data moved: the fingerprint's dataset
                            # digest, not the path, says whether it is the same data
                            "data.root"})

SUBSET_HELP = ("single-dataset evaluation (SDE): LOSO inside these source datasets alone (e.g. casme2; several "
               "allowed); the run is labelled SDE(...). Default: every source (CDE)")
DASK_HELP = ("run the folds on a Dask cluster (tcp://HOST:8786; start one with `dask scheduler` and "
             "`dask worker ADDRESS`); finished folds are saved as they arrive")
JOBS_HELP = ("parallel worker processes, one torch thread each (-1: one per core). Default: one per core, "
             "or 1 when --threads is given")
FOLD_BATCH_HELP = ("models a worker trains at once as one vectorised model (folds, seeds); 1: one at a time. "
                   "Default: chosen for the model and device (models that cannot be batched train one at a time)")


# --------------------------------------------------------------------------------------------- configuration


def resolve_config(cfg: RunConfig) -> RunConfig:
    """The config with every model argument filled in and type-checked."""
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"expected a RunConfig, got {type(cfg).__name__} {cfg!r:.60}; build one with "
                          "epir.make_config(MODEL, DATASET) or RunConfig.load('config.yaml').")
    return replace(cfg, model=replace(cfg.model, args=resolve_model_args(cfg.model.name, cfg.model.args)))


def make_config(
    model: str = "epir",
    dataset: str = "synthetic",
    *,
    root: str | None = None,
    seeds: Sequence[int] = (0,),
    folds: Sequence[str] = (),
    oracle_epoch: bool = False,
    overrides: Sequence[str] = (),
    recipe: str | None = None,
) -> RunConfig:
    """A run config: model ``model`` with its default (or named ``recipe``), then ``KEY=VALUE`` ``overrides``.

    Example: ``make_config("epir", "megc2019", seeds=(0, 1, 2), overrides=["train.epochs=20"])``.
    """
    cfg = RunConfig(
        model=ModelConfig(name=model),
        data=DataConfig(dataset=dataset, root=root),
        train=default_recipe(model, recipe),
        eval=EvalConfig(seeds=tuple(seeds), folds=tuple(folds), oracle_epoch=oracle_epoch),
    )
    return apply_overrides(cfg, list(overrides))


def resolve_run_config(
    model: str = "epir",
    *,
    recipe: str | None = None,
    config_file: str | None = None,
    values: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    folds: Sequence[str] | None = None,
    oracle_epoch: bool = False,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """Resolve a RunConfig in the module's order: recipe or ``config_file``, ``values`` (config key -> value; None
    leaves a key as it is), ``seeds``/``folds``/``oracle_epoch``, then ``overrides`` (``KEY=VALUE``).
    """
    cfg = RunConfig.load(config_file) if config_file else make_config(model, recipe=recipe)
    for key, value in (values or {}).items():
        if value is not None:
            cfg = set_value(cfg, key, value)
    if seeds:
        cfg = replace(cfg, eval=replace(cfg.eval, seeds=tuple(seeds)))
    if folds:
        cfg = replace(cfg, eval=replace(cfg.eval, folds=tuple(folds)))
    if oracle_epoch:
        cfg = replace(cfg, eval=replace(cfg.eval, oracle_epoch=True))
    return apply_overrides(cfg, list(overrides))


def execution_free(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """``cfg`` as a dict without the :data:`EXECUTION_KEYS`: what a resumed run must match."""
    return {sec: {k: v for k, v in d.items() if f"{sec}.{k}" not in EXECUTION_KEYS}
            for sec, d in cfg.to_dict().items()}


# ------------------------------------------------------------------------------------------- command lines


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Which data and folds: ``--dataset``, ``--root``, ``--subset``, ``--seeds``, ``--folds``."""
    p.add_argument("--dataset", default=None, help="registered dataset name (epir list datasets; default synthetic)")
    p.add_argument("--root", default=None, help="dataset root (flowmaps/megc2019: or $EPIR_MEGC2019_ROOT)")
    p.add_argument("--subset", nargs="+", metavar="SOURCE", help=SUBSET_HELP)
    p.add_argument("--seeds", type=int, nargs="+", help="repeat the whole LOSO for each seed (default 0)")
    p.add_argument("--folds", nargs="+", metavar="SUBJECT", help="run only these subjects' folds")


def add_recipe_options(p: argparse.ArgumentParser, *, per_model: bool = False) -> None:
    """Recipe overrides: ``--epochs``, ``--batch-size``, ``--lr`` and ``--set KEY=VALUE`` (``[MODEL:]KEY=VALUE``
    where several models run: ``per_model``).
    """
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    if per_model:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                       help="override a config field for every arm, for every arm of one model with MODEL: in "
                            "front, or for one arm with MODEL@RECIPE: in front")
    else:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config field, e.g. train.weight_decay=0.01 or model.dim=32 (repeatable)")


def add_execution_options(p: argparse.ArgumentParser, *, loso: bool = True) -> None:
    """How a run executes (none of it changes a result): device, threads, workers, fold batching, Dask, output.

    ``loso=False`` (``epir train``): only ``--device``, ``--threads`` and ``--no-progress``.
    """
    p.add_argument("--device", default=None, help="torch device (cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if not loso:
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
        return
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (given alone: one process with that many threads)")
    p.add_argument("--jobs", type=int, default=None, help=JOBS_HELP)
    p.add_argument("--fold-batch", type=int, default=None, metavar="N", help=FOLD_BATCH_HELP)
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS", help=DASK_HELP)
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<dataset>-<time>); "
                                               "rerunning with the same --out resumes finished folds")
    p.add_argument("--tensorboard", action="store_const", const=True, default=None,
                   help="also write the training curves as TensorBoard event files (needs pip install tensorboard)")


def add_run_options(p: argparse.ArgumentParser, *, model: str | None = "epir", loso: bool = True,
                    data: bool = True) -> None:
    """The options shared by every command that trains one model (loso, demo, ablate, train): the model and its
    recipe, :func:`add_data_options`, :func:`add_recipe_options`, :func:`add_execution_options` (``epir compare``
    uses the last three with its own model options).

    Args:
        p: the subcommand's parser.
        model: the default of ``--model`` (None: the command has its own model argument).
        loso: add the evaluation and execution options (seeds, folds, workers, Dask, ``--out``); ``epir train``
            leaves them out.
        data: add the data options (``epir pretrain`` generates its own).
    """
    if model is not None:
        p.add_argument("--model", default=model, help="registered model name (epir list models)")
    p.add_argument("--config", default=None, help="a config.yaml to start from (e.g. a run's own)")
    p.add_argument("--recipe", default=None, help="a named recipe of the model instead of its default "
                                                   "(e.g. htnet: official, cpu; `epir list models` names them)")
    add_recipe_options(p)
    if loso:
        add_data_options(p)
        p.add_argument("--oracle-epoch", action="store_true",
                       help="OPTIMISTIC protocol of published baselines: per subject, the epoch with the best test "
                            "accuracy; every output is labelled 'oracle-epoch (optimistic)'")
    else:
        if data:
            p.add_argument("--dataset", default=None,
                           help="registered dataset name (epir list datasets; default synthetic)")
            p.add_argument("--root", default=None, help="dataset root (flowmaps/megc2019: or $EPIR_MEGC2019_ROOT)")
            p.add_argument("--subset", nargs="+", metavar="SOURCE", help="train on these source datasets only")
        p.set_defaults(seeds=None, folds=None, oracle_epoch=False, jobs=None, dask_scheduler=None, fold_batch=None,
                       tensorboard=None)
    add_execution_options(p, loso=loso)


def default_jobs(args: argparse.Namespace) -> int | None:
    """Worker processes when --jobs is not given: one per core (a plain command uses the whole machine), or
    None (the configuration's value) when --threads pins this process's threads or --config is given.
    """
    if getattr(args, "jobs", None) is not None or getattr(args, "threads", None) is not None:
        return None
    if not hasattr(args, "jobs"):
        return None
    return None if getattr(args, "config", None) else -1


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the flags of :data:`FLAG_KEYS` set (None where a flag was not given), with the
    default number of workers (:func:`default_jobs`).
    """
    values = {key: getattr(args, flag, None) for flag, key in FLAG_KEYS}
    if values["eval.jobs"] is None:
        values["eval.jobs"] = default_jobs(args)
    return values


def config_from_args(args: argparse.Namespace, model: str | None = None) -> RunConfig:
    """The RunConfig of a command's parsed :func:`add_run_options` arguments (the module's order)."""
    values = {"data.dataset": getattr(args, "dataset", None), "data.root": getattr(args, "root", None),
              **flag_values(args)}
    return resolve_run_config(
        model or args.model, recipe=getattr(args, "recipe", None), config_file=getattr(args, "config", None),
        values=values, seeds=getattr(args, "seeds", None), folds=getattr(args, "folds", None),
        oracle_epoch=bool(getattr(args, "oracle_epoch", False)), overrides=getattr(args, "overrides", ()),
    )


def parse_sets(items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict (values parsed like YAML scalars); see :func:`epir.config.parse_key_values`."""
    return parse_key_values(items, option)


# ------------------------------------------------------------------------------------------------------ data


def select_sources(dataset: FlowDataset, subset: Sequence[str]) -> FlowDataset:
    """The samples of the source datasets in ``subset`` (single-dataset evaluation); all when empty."""
    if not subset:
        return dataset
    present = sorted(set(dataset.sources))
    unknown = [s for s in subset if s not in present]
    if unknown:
        raise ConfigError(
            f"data.subset: no source dataset {unknown[0]!r} in dataset {dataset.name!r}."
            f"{did_you_mean(unknown[0], present)} Its samples come from: {', '.join(present)}."
        )
    keep = np.flatnonzero(np.isin(np.asarray(dataset.sources), list(subset)))
    return dataset.subset(keep)


def select_subjects(dataset: FlowDataset, wanted: Sequence[str]) -> list[str]:
    """The fold subjects: all of them, or those named (namespaced, or a bare id if unambiguous)."""
    subjects = dataset.subject_list()
    if not wanted:
        return subjects
    chosen = []
    for name in wanted:
        if name in subjects:
            chosen.append(name)
            continue
        matches = [s for s in subjects if s.split("/", 1)[-1] == name]
        if len(matches) == 1:
            chosen.append(matches[0])
        else:
            if matches:
                hint = "ambiguous: " + ", ".join(matches)
            else:  # compare a bare id with bare ids, a namespaced name with namespaced ones
                bare = {s.split("/", 1)[-1]: s for s in subjects}
                close = closest(name, subjects if "/" in name else list(bare))
                hint = f"Did you mean {bare.get(close, close)!r}?" if close else "not found"
            raise ConfigError(
                f"eval.folds: no subject {name!r} in dataset {dataset.name!r} ({hint}). "
                f"Subjects look like {subjects[0]!r}; `epir list subjects --dataset {dataset.name}` lists them."
            )
    return list(dict.fromkeys(chosen))


def check_root(dataset: str, root: str | None) -> None:
    """A root given for the generated synthetic set is a mistake (the data meant is elsewhere): a ConfigError."""
    if dataset == "synthetic" and root is not None:
        raise ConfigError(f"data.root={root!r}: the synthetic set is generated, it has no root; leave "
                          f"data.root unset, or name the dataset that lives there: --dataset megc2019 "
                          f"(data.dataset=megc2019) for the HTNet layout of the composite set, --dataset flowmaps for "
                          f"epir preprocess's output.")


def load_data(cfg: RunConfig, dataset: FlowDataset | None = None) -> FlowDataset:
    """The run's samples: ``dataset`` or the one ``cfg.data`` names, restricted to ``data.subset``."""
    check_root(cfg.data.dataset, cfg.data.root)
    if dataset is None:
        dataset = load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.data.seed)
    return select_sources(dataset, tuple(cfg.data.subset or ()))


def transform_data(cfg: RunConfig, dataset: FlowDataset) -> tuple[FlowDataset, dict[str, Any]]:
    """``data.input_transform`` applied, with its report (empty when the transform is ``none``)."""
    if cfg.data.input_transform == "none":
        return dataset, {}
    return apply_input_transform(dataset, cfg.data.input_transform)


def check_model_fits(cfg: RunConfig, dataset: FlowDataset) -> None:
    """The model accepts the dataset's map size, channels and class count (a clear error before anything trains);
    maps that look scaled to 0-1 instead of epir's 0-255 are warned about (:class:`MapRangeWarning`).
    """
    top = float(dataset.x.max()) if dataset.x.numel() else 0.0
    if 0.0 < top <= 1.0:
        warnings.warn(f"dataset {dataset.name!r}: every map value is within 0-1 (max {top:.3g}); epir's maps are "
                      "0-255 per channel (epir preprocess), and recipes without input normalisation (STSTNet's, "
                      "HTNet's) train on the raw values: multiply the maps by 255 if they were scaled.",
                      MapRangeWarning, stacklevel=2)
    size = accepted_input_size(cfg.model.name, cfg.model.args)
    if size is not None and tuple(dataset.x.shape[-2:]) != (size, size):
        h, w = dataset.x.shape[-2:]
        raise ConfigError(
            f"model {cfg.model.name!r} accepts {size}x{size} maps but dataset {dataset.name!r} holds {h}x{w} maps; "
            f"set model.image_size={h} where the model has that argument, or make {size}x{size} maps "
            f"(epir preprocess)."
        )
    channels = int(resolve_model_args(cfg.model.name, cfg.model.args).get("in_channels", len(CHANNELS)))
    if dataset.x.shape[1] != channels:
        raise ConfigError(
            f"model {cfg.model.name!r} takes maps with {channels} channels but dataset {dataset.name!r} holds "
            f"{dataset.x.shape[1]}; give maps of u, v and strain (N, 3, H, W), or set model.in_channels where the "
            "model has that argument."
        )
    classes = cfg.model.args.get("num_classes")
    if classes is not None and int(classes) != dataset.num_classes:
        raise ConfigError(
            f"model.num_classes={classes} but dataset {dataset.name!r} has {dataset.num_classes} classes "
            f"({', '.join(dataset.class_names)}); leave model.num_classes unset or set it to {dataset.num_classes}."
        )


def prepare_data(cfg: RunConfig, dataset: FlowDataset | None = None) -> tuple[FlowDataset, dict[str, Any]]:
    """Load (or take) the data, keep ``data.subset``, apply ``data.input_transform`` and check the model fits.

    Returns:
        ``(dataset, transform_report)``.
    """
    data, report = transform_data(cfg, load_data(cfg, dataset))
    check_model_fits(cfg, data)
    return data, report


__all__ = ["EXECUTION_KEYS", "FLAG_KEYS", "add_data_options", "add_execution_options", "add_recipe_options",
           "add_run_options", "check_model_fits", "check_root", "config_from_args", "default_jobs",
           "execution_free", "flag_values", "load_data", "make_config", "parse_sets", "prepare_data",
           "resolve_config", "resolve_run_config", "select_sources", "select_subjects", "transform_data"]

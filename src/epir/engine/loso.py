"""Leave-one-subject-out evaluation.

One fold per subject, a fresh model and optimizer per fold. ``fit`` receives the training subjects' samples
only. Each finished fold is written to ``OUT/folds/seed<S>/<subject>.json`` at once, so an interrupted run
started again with the same output directory skips the folds it already has.
"""
from __future__ import annotations

import difflib
import importlib
import math
import os
import shlex
import sys
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, apply_overrides, check_ranges
from epir.engine.runstore import (
    FINGERPRINT,
    RunLock,
    check_fingerprint,
    read_fold_file,
    run_fingerprint,
    write_json_atomic,
)
from epir.data import FlowDataset, load_dataset
from epir.data.transforms import apply_input_transform
from epir.engine.report_html import write_run_report
from epir.engine.results import FOLD_WEIGHTS, HONEST, ORACLE, format_summary, summarize, write_results
from epir.engine.selection import candidate_configs, select_in_fold, teacher_config, train_models, train_teachers
from epir.engine.train import InputNorm, fit, predict_proba, steps_per_epoch
from epir.errors import ConfigError, DatasetNotFoundError, did_you_mean
from epir.profiling import count_flops
from epir.models import MODELS, accepted_input_size, build_model, default_recipe, is_batchable, resolve_model_args

#: Config fields that may differ when resuming a run (they do not change a finished fold's result).
RESUME_FREE = {("eval", "seeds"), ("eval", "folds"), ("eval", "device"), ("eval", "threads"), ("eval", "jobs"),
               ("eval", "dask_scheduler"), ("eval", "fold_batch"), ("eval", "report"), ("eval", "tensorboard")}


def resolve_config(cfg: RunConfig) -> RunConfig:
    """The config with every model argument filled in and type-checked."""
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


def protocol_of(cfg: RunConfig, fold_weights: str | os.PathLike | None = None) -> str:
    if fold_weights is not None:
        return FOLD_WEIGHTS
    return ORACLE if cfg.eval.oracle_epoch else HONEST


def evaluation_of(cfg: RunConfig) -> str:
    """``CDE`` (one LOSO over every source) or ``SDE(casme2)`` / ``SDE(casme2+samm)`` (``data.subset``)."""
    return f"SDE({'+'.join(cfg.data.subset)})" if cfg.data.subset else "CDE"


def select_sources(dataset: FlowDataset, subset: Sequence[str]) -> FlowDataset:
    """The samples of the source datasets in ``subset`` (single-dataset evaluation); all when empty."""
    if not subset:
        return dataset
    present = sorted(set(dataset.sources))
    unknown = [s for s in subset if s not in present]
    if unknown:
        raise ConfigError(
            f"--subset / data.subset: no source dataset {unknown[0]!r} in dataset {dataset.name!r}."
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
                close = difflib.get_close_matches(name, subjects if "/" in name else list(bare), n=1, cutoff=0.5)
                hint = f"Did you mean {bare.get(close[0], close[0])!r}?" if close else "not found"
            raise ConfigError(
                f"--folds: no subject {name!r} in dataset {dataset.name!r} ({hint}). "
                f"Subjects look like {subjects[0]!r}; `epir list subjects --dataset {dataset.name}` lists them."
            )
    return list(dict.fromkeys(chosen))


def fold_seed(seed: int, subject: str) -> int:
    """Seed of one fold's model init and batches: depends only on the run seed and the subject."""
    return (seed * 1_000_003 + zlib.crc32(subject.encode())) % (2**31 - 1)


def fold_file(out_dir: Path, seed: int, subject: str) -> Path:
    return out_dir / "folds" / f"seed{seed}" / (subject.replace("/", "__") + ".json")


def member_seeds(base: int, members: int) -> list[int]:
    """Seeds of a fold's ensemble members: the fold's own seed first (so one member is the plain fold)."""
    if members < 1:
        raise ConfigError(f"train.ensemble must be >= 1 (models per fold), got {members}.")
    return [(base + 7919 * k) % (2**31 - 1) for k in range(members)]


def fold_split(dataset: FlowDataset, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) of the fold holding out ``subject``: every other subject's rows, and its own."""
    subjects = np.asarray(dataset.subjects)
    return np.flatnonzero(subjects != subject), np.flatnonzero(subjects == subject)


def fold_record(
    seed: int, subject: str, test_idx: np.ndarray, true: torch.Tensor, probs: torch.Tensor, epoch: int | None,
    seconds: float, n_train: int,
) -> dict[str, Any]:
    """The fold file's record: the held-out rows, their labels, predictions and probabilities."""
    return {
        "seed": seed,
        "subject": subject,
        "indices": test_idx.tolist(),
        "true": true.tolist(),
        "predicted": probs.argmax(1).tolist(),
        "probs": probs.tolist(),
        "epoch": epoch,
        "seconds": seconds,
        "n_train": int(n_train),
    }


class _OracleBest:
    """Optimistic protocol of the published baselines: per subject, keep the (latest) epoch with the best
    accuracy on the held-out subject. Only here, in the caller of ``fit``, does test data appear."""

    def __init__(self, test_x: torch.Tensor, test_y: torch.Tensor, device: str) -> None:
        self.test_x, self.test_y, self.device = test_x, test_y, device
        self.acc, self.probs, self.epoch = -1.0, None, None

    def update(self, epoch: int, model: torch.nn.Module, norm: InputNorm) -> None:
        p = predict_proba(model, norm, self.test_x, device=self.device)
        acc = float((p.argmax(1) == self.test_y).float().mean())
        if acc >= self.acc:
            self.acc, self.probs, self.epoch = acc, p, epoch


def _curve_dict(history: list[dict[str, float]]) -> dict[str, list[float]]:
    """A training curve as the fold file keeps it: per epoch, the mean training loss and accuracy."""
    return {"loss": [round(h["loss"], 6) for h in history], "acc": [round(h["acc"], 6) for h in history]}


def run_fold(
    dataset: FlowDataset,
    cfg: RunConfig,
    subject: str,
    seed: int,
    *,
    fold_weights: str | os.PathLike | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train on every subject but ``subject`` and predict ``subject``'s samples."""
    train_idx, test_idx = fold_split(dataset, subject)
    test = dataset.subset(test_idx)
    device = cfg.eval.device
    torch.manual_seed(fold_seed(seed, subject))
    model = build_model(cfg.model)
    t0 = time.perf_counter()
    chosen_epoch: int | None = None
    selection: dict[str, Any] = {}
    curve: list[dict[str, float]] = []  # the (first member's) training curve
    if fold_weights is not None:
        path = Path(fold_weights) / f"{test.subject_ids[0]}.pth"
        if not path.is_file():
            raise DatasetNotFoundError(
                f"--fold-weights: {path} does not exist; expected one <subject>.pth per fold, named by the "
                f"subject id as in the dataset ({test.subject_ids[0]!r})."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for a non-weights file
            raise ConfigError(
                f"--fold-weights: {path} is not a file of tensors (a state dict saved with torch.save): "
                f"{type(e).__name__}. Nothing is unpickled beyond tensors; give the per-subject weights files."
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(f"--fold-weights: {path} holds {type(state).__name__}, not a state dict of tensors.")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"--fold-weights: {path} does not fit model {cfg.model.name!r}: {e}") from None
        model.to(device)
        norm = InputNorm.fit(cfg.train.input_norm, dataset.x[train_idx])
        probs = predict_proba(model, norm, test.x, device=device)
    else:
        train = dataset.subset(train_idx)
        member_probs, epochs = [], []
        if cfg.train.select:  # choose the recipe on the training subjects alone, then build its model afresh
            cfg, selection = select_in_fold(dataset, cfg, train_idx, fold_seed(seed, subject),
                                            name=f"fold {subject} seed {seed}", batched=False)
            torch.manual_seed(fold_seed(seed, subject))
            model = build_model(cfg.model)
        teachers = train_teachers(dataset, cfg, [(train_idx, fold_seed(seed, subject), f"fold {subject} seed {seed}")],
                                  batched=False)
        if teachers is not None:  # the teacher used the global generator: the student starts as without one
            torch.manual_seed(fold_seed(seed, subject))
            model = build_model(cfg.model)
        for k, mseed in enumerate(member_seeds(fold_seed(seed, subject), cfg.train.ensemble)):
            if k > 0:  # the first member is the model built above (so one member is the plain fold)
                torch.manual_seed(mseed)
                model = build_model(cfg.model)
            oracle = _OracleBest(test.x, test.y, device) if cfg.eval.oracle_epoch else None

            def epoch_done(epoch: int, m: torch.nn.Module, norm: InputNorm, _o: _OracleBest | None = oracle) -> None:
                if _o is not None:
                    _o.update(epoch, m, norm)
                if on_epoch is not None:
                    on_epoch(epoch)

            norm = fit(
                model,
                train.x,
                train.y,
                cfg.train,
                seed=mseed,
                num_classes=dataset.num_classes,
                device=device,
                on_epoch=epoch_done,
                describe=f"fold {subject} seed {seed}" + (f" member {k}" if cfg.train.ensemble > 1 else ""),
                teacher=None if teachers is None else teachers[0],
                history=curve if k == 0 else None,
            )
            if oracle is not None and oracle.probs is not None:
                member_probs.append(oracle.probs)
                epochs.append(oracle.epoch)
            else:
                member_probs.append(predict_proba(model, norm, test.x, device=device))
                epochs.append(cfg.train.epochs - 1)
        probs = torch.stack(member_probs).mean(dim=0)  # the ensemble: mean of the members' probabilities
        chosen_epoch = epochs[0]
    rec = fold_record(seed, subject, test_idx, test.y, probs, chosen_epoch, time.perf_counter() - t0, len(train_idx))
    if selection:
        rec["selection"] = selection
    if curve:
        rec["curve"] = _curve_dict(curve)
    return rec


Fold = tuple[int, str]  # (seed, subject)


def run_fold_group(
    dataset: FlowDataset,
    cfg: RunConfig,
    folds: Sequence[Fold],
    fold_weights: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Train the ``(seed, subject)`` folds of one group at once (``epir.engine.batched.fit_many``) and return
    their records; one fold (or ``fold_weights``) runs :func:`run_fold`. Each member of the group gets exactly
    its own fold's training rows; its held-out subject's rows are only predicted, after training (or per epoch
    under the optimistic ``eval.oracle_epoch``)."""
    if (len(folds) == 1 and cfg.train.ensemble == 1) or fold_weights is not None:
        return [run_fold(dataset, cfg, subject, seed, fold_weights=fold_weights) for seed, subject in folds]
    from epir.engine.batched import Member, fit_many

    device = cfg.eval.device
    t0 = time.perf_counter()
    splits = [fold_split(dataset, subject) for _, subject in folds]
    k_members = cfg.train.ensemble
    # Selection inside each fold (training subjects only), then one training per chosen candidate.
    chosen: list[tuple[int, RunConfig]] = []
    selections: list[dict[str, Any]] = []
    for (seed, subject), (train_idx, _) in zip(folds, splits):
        if cfg.train.select:
            c, info = select_in_fold(dataset, cfg, train_idx, fold_seed(seed, subject),
                                     name=f"fold {subject} seed {seed}")
            chosen.append((info["chosen"], c))
        else:
            c, info = cfg, {}
            chosen.append((-1, cfg))
        selections.append(info)
    tests = [(dataset.x[test_idx], dataset.y[test_idx]) for _, test_idx in splits]
    member_probs: list[list[torch.Tensor]] = [[] for _ in folds]
    member_epochs: list[list[int]] = [[] for _ in folds]
    curves: list[list[dict[str, float]]] = [[] for _ in folds]  # each fold's first member's training curve
    for key in sorted({k for k, _ in chosen}):
        idx = [f for f, (k, _) in enumerate(chosen) if k == key]
        ccfg = chosen[idx[0]][1]
        jobs = [
            (dataset.x[splits[f][0]], dataset.y[splits[f][0]], mseed,
             f"fold {folds[f][1]} seed {folds[f][0]}" + (f" member {k}" if k_members > 1 else ""))
            for f in idx
            for k, mseed in enumerate(member_seeds(fold_seed(*folds[f]), k_members))
        ]
        owner = [f for f in idx for _ in range(k_members)]
        histories = [curves[f] if k == 0 else [] for f in idx for k in range(k_members)]
        fold_teachers = train_teachers(
            dataset, ccfg, [(splits[f][0], fold_seed(*folds[f]), f"fold {folds[f][1]} seed {folds[f][0]}") for f in idx]
        )
        teachers = None if fold_teachers is None else [fold_teachers[idx.index(f)] for f in owner]
        if cfg.eval.oracle_epoch:  # optimistic: per member, the epoch with the best held-out accuracy
            oracles = [_OracleBest(*tests[f], device) for f in owner]

            def epoch_done(epoch: int, models: list[torch.nn.Module], norms: list[InputNorm],
                           _o: list[_OracleBest] = oracles) -> None:
                for oracle, model, norm in zip(_o, models, norms):
                    oracle.update(epoch, model, norm)

            members = [Member(x, y, s_, n) for x, y, s_, n in jobs]
            fit_many(ccfg.model, members, ccfg.train, num_classes=dataset.num_classes, device=device,
                     on_epoch=epoch_done, teachers=teachers, histories=histories)
            for f, oracle in zip(owner, oracles):
                member_probs[f].append(oracle.probs)
                member_epochs[f].append(oracle.epoch)
            continue
        models, norms = train_models(ccfg.model, ccfg.train, jobs, num_classes=dataset.num_classes, device=device,
                                     teachers=teachers, histories=histories)
        for f, model, norm in zip(owner, models, norms):
            member_probs[f].append(predict_proba(model, norm, tests[f][0], device=device))
            member_epochs[f].append(ccfg.train.epochs - 1)
    seconds = (time.perf_counter() - t0) / len(folds)
    records = []
    for f, ((seed, subject), (train_idx, test_idx)) in enumerate(zip(folds, splits)):
        probs = torch.stack(member_probs[f]).mean(dim=0)  # the ensemble: mean of the members' probabilities
        rec = fold_record(seed, subject, test_idx, tests[f][1], probs, member_epochs[f][0], seconds, len(train_idx))
        if selections[f]:
            rec["selection"] = selections[f]
        if curves[f]:
            rec["curve"] = _curve_dict(curves[f])
        records.append(rec)
    return records


#: Models trained at once per worker when ``eval.fold_batch`` is 0 (automatic), by device type; measured by
#: ``benchmarks/loso_speed.py``: on the 2-core CPU, 8 was ~1.3x the loop but took the process tree past 2 GB; 4 stays
#: within it (1.86 GB) at ~1.1x.
AUTO_FOLD_BATCH = {"cpu": 4, "cuda": 68}


def resolve_fold_batch(cfg: RunConfig, fold_weights: str | os.PathLike | None = None) -> tuple[int, str]:
    """Models trained at once per worker, and a note when the model or protocol cannot be batched."""
    if fold_weights is not None:
        return 1, ""
    if not is_batchable(cfg.model.name):
        note = (f"note: model {cfg.model.name!r} is not batchable (registered without batchable=True); "
                f"its folds train one at a time")
        return 1, note if cfg.eval.fold_batch > 1 else ""
    if cfg.eval.fold_batch:
        return cfg.eval.fold_batch, ""
    kind = torch.device(cfg.eval.device).type
    per_model = MODELS.meta(cfg.model.name).get("auto_fold_batch", {})
    return per_model.get(kind, AUTO_FOLD_BATCH.get(kind, 4)), ""


def plan_groups(dataset: FlowDataset, cfg: RunConfig, todo: Sequence[Fold], fold_batch: int, workers: int = 1
                ) -> list[list[Fold]]:
    """Split the folds to run into groups trained together: folds whose training sets take the same number of
    optimizer steps per epoch, at most ``fold_batch`` per group, and (when the automatic size would leave
    workers idle) small enough that every worker gets a group."""
    per_fold = cfg.train.ensemble  # models trained per fold
    if fold_batch <= per_fold or len(todo) <= 1:
        return [[f] for f in todo]
    cap = fold_batch // per_fold
    workers = max(1, workers)
    rounds = math.ceil(len(todo) / (workers * cap))  # balance: every worker gets about as many folds
    size = max(1, math.ceil(len(todo) / (workers * rounds)))
    counts = Counter(dataset.subjects)
    by_steps: dict[int, list[Fold]] = {}
    for seed, subject in todo:
        steps = steps_per_epoch(len(dataset) - counts[subject], cfg.train.batch_size)
        by_steps.setdefault(steps, []).append((seed, subject))
    return [group[i : i + size] for group in by_steps.values() for i in range(0, len(group), size)]


def _group_task(
    dataset: FlowDataset, cfg: RunConfig, folds: Sequence[Fold], fold_weights: str | os.PathLike | None,
    batched: bool = True,
) -> list[dict[str, Any]]:
    """One group of folds in a worker process: one torch thread per worker unless ``eval.threads`` says
    otherwise, so workers do not fight over cores."""
    torch.set_num_threads(cfg.eval.threads or 1)
    if not batched:
        return [run_fold(dataset, cfg, subject, seed, fold_weights=fold_weights) for seed, subject in folds]
    return run_fold_group(dataset, cfg, folds, fold_weights)


def run_on_dask(
    address: str,
    dataset: FlowDataset,
    cfg: RunConfig,
    groups: Sequence[Sequence[Fold]],
    fold_weights: str | os.PathLike | None = None,
    batched: bool = True,
) -> Iterator[dict[str, Any]]:
    """Run groups of ``(seed, subject)`` folds on a Dask distributed cluster, one task per group (a group of
    one fold when folds are not batched); yield each fold's record as its group finishes.

    The dataset is sent to the workers once (``scatter``), so workers need the ``epir`` package but not the data
    files. Each fold is one task running exactly the code of the local backends (one torch thread unless
    ``eval.threads`` says otherwise), so the same seeds give the same results. A worker that dies loses only its
    running task, which the scheduler gives to another worker; the caller records every finished fold at once,
    so even a lost client loses nothing finished (rerun with the same ``--out``).
    """
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError(
            "--dask-scheduler needs Dask's distributed scheduler: pip install 'epir[dask]' "
            "(or pip install 'dask[distributed]') on this machine and on every worker."
        ) from None
    try:
        client = Client(address, timeout="15s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ConfigError(
            f"--dask-scheduler {address}: cannot connect ({e}). Start a scheduler with `dask scheduler` and "
            f"workers with `dask worker {address}`, or check the address (tcp://HOST:8786)."
        ) from None
    try:
        data = client.scatter(dataset, broadcast=True)
        tag = zlib.crc32(cfg.to_yaml().encode())
        futures = [
            client.submit(_group_task, data, cfg, list(group), fold_weights, batched,
                          key=f"epir-folds-{tag:08x}-{group[0][0]}-{group[0][1]}-{len(group)}", pure=False)
            for group in groups
        ]
        with client.as_current():
            for future in as_completed(futures):
                yield from future.result()
    finally:
        client.close()


def _check_resume(out_dir: Path, cfg: RunConfig) -> None:
    path = out_dir / "config.yaml"
    if not path.exists():
        return
    # An older run's config lacks model arguments added since; they took their defaults then.
    old = resolve_config(RunConfig.load(path)).to_dict()
    new = cfg.to_dict()
    diffs = [
        f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {v!r}"
        for sec, d in new.items()
        for k, v in d.items()
        if (sec, k) not in RESUME_FREE and old.get(sec, {}).get(k) != v
    ]
    if diffs:
        raise ConfigError(
            f"{out_dir} holds a run with a different configuration ({'; '.join(diffs)}). "
            f"Use another --out, or delete {out_dir} to start over."
        )


def command_line() -> str:
    """The command that is running, as a shell line (``epir loso ...`` from the CLI)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "epir":
        argv[0] = "epir"
    elif argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return shlex.join(argv)


def write_curves(out: Path, records: Sequence[dict[str, Any]]) -> None:
    """``OUT/curves.csv``: per fold (seed, subject) and epoch, the mean training loss and accuracy."""
    rows = [
        {"seed": r["seed"], "subject": r["subject"], "epoch": e, "loss": lo, "acc": ac}
        for r in records if r.get("curve")
        for e, (lo, ac) in enumerate(zip(r["curve"]["loss"], r["curve"]["acc"]))
    ]
    if rows:
        pd.DataFrame(rows).to_csv(out / "curves.csv", index=False)


def _summary_writer() -> type:
    """TensorBoard's ``SummaryWriter``, or the error that says how to install it."""
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:
        raise ConfigError("eval.tensorboard (--tensorboard) needs the tensorboard package: pip install "
                          "tensorboard.") from None


def write_tensorboard(out: Path, records: Sequence[dict[str, Any]]) -> None:
    """The training curves as TensorBoard event files, one run per fold, under ``OUT/tensorboard``."""
    SummaryWriter = _summary_writer()  # noqa: N806 (a class)
    for r in records:
        if not r.get("curve"):
            continue
        with SummaryWriter(str(out / "tensorboard" / f"seed{r['seed']}" / r["subject"].replace("/", "__"))) as w:
            for e, (lo, ac) in enumerate(zip(r["curve"]["loss"], r["curve"]["acc"])):
                w.add_scalar("train/loss", lo, e)
                w.add_scalar("train/accuracy", ac, e)


def _wider_run(out: Path, seeds: Sequence[int], subjects: Sequence[str]) -> str:
    """A description of the finished folds in ``out`` that this run does not cover ('' when none)."""
    wanted = {fold_file(out, s, subject).resolve() for s in seeds for subject in subjects}
    extra = [p for p in (out / "folds").glob("seed*/*.json") if p.resolve() not in wanted]
    if not extra:
        return ""
    return f"{len(extra)} more fold file(s), e.g. {extra[0].relative_to(out)}"


def predictions_frame(dataset: FlowDataset, records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (seed, sample) from fold records, in fold order."""
    rows = []
    for r in records:
        for i, t, p, pr in zip(r["indices"], r["true"], r["predicted"], r["probs"]):
            row = {
                "seed": r["seed"],
                "subject": dataset.subjects[i],
                "subject_id": dataset.subject_ids[i],
                "source": dataset.sources[i],
                "clip": dataset.clips[i],
                "true": t,
                "predicted": p,
                "true_name": dataset.class_names[t],
                "predicted_name": dataset.class_names[p],
                "epoch": r["epoch"],
            }
            row.update({f"prob_{c}": round(float(v), 6) for c, v in zip(dataset.class_names, pr)})
            rows.append(row)
    return pd.DataFrame(rows)


def run_loso(
    cfg: RunConfig,
    dataset: FlowDataset | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    fold_weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run leave-one-subject-out for every seed in ``cfg.eval.seeds`` and return the pooled results.

    Args:
        cfg: the run configuration (model, data, recipe, protocol).
        dataset: the data; loaded from ``cfg.data`` when omitted.
        out_dir: run directory (config.yaml, results.json, predictions.csv, megc_log.txt, folds/); a run
            started again with the same directory resumes from its finished folds.
        fold_weights: evaluate ``DIR/<subject>.pth`` per fold instead of training.
        progress: show a progress bar over folds and epochs.

    Returns:
        The content of ``results.json`` (keys ``uf1``, ``uar``, ``protocol``, ``per_dataset``, ...).
    """
    cfg = resolve_config(cfg)
    check_ranges(cfg)
    if cfg.data.dataset == "synthetic" and cfg.data.root is not None:
        raise ConfigError(f"data.root={cfg.data.root!r}: the synthetic set is generated, it has no root; leave "
                          f"--root out, or name the dataset that lives there (--dataset megc2019).")
    if dataset is None:
        dataset = load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.data.seed)
    dataset = select_sources(dataset, cfg.data.subset)
    evaluation = evaluation_of(cfg)
    transform_report: dict[str, Any] = {}
    if cfg.data.input_transform != "none":
        dataset, transform_report = apply_input_transform(dataset, cfg.data.input_transform)
    subjects = select_subjects(dataset, cfg.eval.folds)
    if cfg.eval.tensorboard:
        _summary_writer()  # checked before training, not after
    if cfg.train.select and cfg.eval.oracle_epoch:
        raise ConfigError(
            "train.select (selection inside the fold, on training subjects) and eval.oracle_epoch (the epoch "
            "picked on the held-out subject) exclude each other: use one."
        )
    if cfg.train.select:
        candidate_configs(cfg)  # a malformed candidate or teacher is an error before anything is trained
    if cfg.train.distill:
        teacher_config(cfg)
    size = accepted_input_size(cfg.model.name, cfg.model.args)
    if size is not None and tuple(dataset.x.shape[-2:]) != (size, size):
        h, w = dataset.x.shape[-2:]
        raise ConfigError(
            f"model {cfg.model.name!r} accepts {size}x{size} maps but dataset {dataset.name!r} holds {h}x{w} maps; "
            f"set model.image_size={h} where the model has that argument, or make {size}x{size} maps "
            f"(epir preprocess)."
        )
    classes = cfg.model.args.get("num_classes")
    if classes is not None and classes != dataset.num_classes:
        raise ConfigError(
            f"model.num_classes={classes} but dataset {dataset.name!r} has {dataset.num_classes} classes "
            f"({', '.join(dataset.class_names)}); leave model.num_classes unset or set it to {dataset.num_classes}."
        )
    protocol = protocol_of(cfg, fold_weights)
    seeds = list(cfg.eval.seeds) if fold_weights is None else [cfg.eval.seeds[0]]
    out = Path(out_dir) if out_dir is not None else None
    lock = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)
        _check_resume(out, cfg)
        fingerprint = run_fingerprint(cfg, dataset, protocol, fold_weights)
        check_fingerprint(out, fingerprint)
        cfg.save(out / "config.yaml")
        write_json_atomic(out / FINGERPRINT, fingerprint)
    try:
        epochs = 0 if fold_weights is not None else cfg.train.epochs
        t_start = time.perf_counter()
        bar = tqdm(total=len(seeds) * len(subjects), desc="LOSO folds", unit="fold", disable=not progress, leave=True)
        done: dict[tuple[int, str], dict[str, Any]] = {}
        todo = []
        for seed in seeds:
            for subject in subjects:
                path = fold_file(out, seed, subject) if out is not None else None
                if path is not None and path.exists():
                    done[(seed, subject)] = read_fold_file(path, dataset, seed, subject)
                    bar.update(1)
                else:
                    todo.append((seed, subject))
        resumed = len(done)

        def finish(rec: dict[str, Any]) -> None:
            rec["clips"] = [dataset.clips[i] for i in rec["indices"]]  # the samples' identities, checked on resume
            if out is not None:
                path = fold_file(out, rec["seed"], rec["subject"])
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, rec)  # a fold file is either complete or absent
            done[(rec["seed"], rec["subject"])] = rec
            bar.update(1)

        fold_batch, note = resolve_fold_batch(cfg, fold_weights)
        if note:
            warnings.warn(note, stacklevel=2)
        cores = os.cpu_count() or 1
        jobs = cores if cfg.eval.jobs == -1 else cfg.eval.jobs  # check_ranges: >= 1 or -1
        groups = plan_groups(dataset, cfg, todo, fold_batch, workers=jobs)
        threads_before = torch.get_num_threads()
        try:
            if cfg.eval.dask_scheduler and todo:
                bar.set_postfix_str(f"dask {cfg.eval.dask_scheduler}")
                for rec in run_on_dask(cfg.eval.dask_scheduler, dataset, cfg, groups, fold_weights, fold_batch > 1):
                    finish(rec)
            elif jobs > 1 and len(groups) > 1:
                from joblib import Parallel, delayed

                bar.set_postfix_str(f"{jobs} workers, {fold_batch} folds at once" if fold_batch > 1 else f"{jobs} workers")
                tasks = (delayed(_group_task)(dataset, cfg, group, fold_weights, fold_batch > 1) for group in groups)
                for recs in Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks):
                    for rec in recs:
                        finish(rec)
            else:
                if cfg.eval.threads:
                    torch.set_num_threads(cfg.eval.threads)
                for group in groups:
                    if fold_batch > 1 and (len(group) > 1 or cfg.train.ensemble > 1):
                        bar.set_postfix_str(f"{len(group)} folds at once")
                        for rec in run_fold_group(dataset, cfg, group, fold_weights):
                            finish(rec)
                        continue
                    seed, subject = group[0]
                    bar.set_postfix_str(f"seed {seed} {subject}")

                    def on_epoch(epoch: int, _s: str = subject, _seed: int = seed) -> None:
                        bar.set_postfix_str(f"seed {_seed} {_s} epoch {epoch + 1}/{epochs}")

                    finish(run_fold(dataset, cfg, subject, seed, fold_weights=fold_weights, on_epoch=on_epoch))
        finally:
            torch.set_num_threads(threads_before)
        records = [done[(seed, subject)] for seed in seeds for subject in subjects]
        bar.close()
        preds = predictions_frame(dataset, records)
        results = summarize(preds, dataset.class_names, protocol, cfg.eval.absent_class)
        model = build_model(cfg.model)
        n_params = int(sum(p.numel() for p in model.parameters()))
        try:
            flops = count_flops(model.eval(), (1, *dataset.x.shape[1:]))
        except Exception:  # a model the FLOP counter cannot trace: the report leaves the figure out
            flops = None
        results.update(
            evaluation=evaluation,
            model=cfg.model.name,
            dataset=dataset.name,
            n=int(len(preds) // len(seeds)),
            n_folds=len(subjects),
            params=n_params,
            params_total=n_params * cfg.train.ensemble,  # every member of an in-fold ensemble
            flops_per_sample=flops,
            wall_seconds=time.perf_counter() - t_start,
            fold_seconds=float(np.mean([r["seconds"] for r in records])) if records else 0.0,
            resumed_folds=resumed,
            fold_batch=fold_batch,
            jobs=jobs,
        )
        if fold_weights is not None:
            results["fold_weights"] = str(fold_weights)
        chosen = [r["selection"]["chosen"] for r in records if r.get("selection")]
        if chosen:
            results["selection"] = {
                "candidates": list(cfg.train.select),
                "select_k": cfg.train.select_k,
                "chosen_counts": {c: chosen.count(i) for i, c in enumerate(cfg.train.select)},
            }
        if transform_report:
            results["input_transform"] = transform_report
        if out is not None:
            wider = _wider_run(out, seeds, subjects)
            if wider:
                warnings.warn(
                    f"{out} holds finished folds beyond this command's --folds/--seeds ({wider}); its results.json, "
                    f"predictions.csv and MEGC logs are left as they are (they cover the whole run). Run the whole "
                    f"set again to rewrite them; these results are printed only.", stacklevel=2)
            else:
                write_results(out, results, preds)
                write_curves(out, records)
                if cfg.eval.tensorboard:
                    write_tensorboard(out, records)
                if cfg.eval.report:
                    write_run_report(out, command=command_line())
            results["out_dir"] = str(out)
        return results
    finally:
        if lock is not None:
            lock.release()


__all__ = [
    "evaluation_of", "format_summary", "make_config", "plan_groups", "resolve_config", "run_fold", "run_fold_group",
    "run_loso", "select_sources", "select_subjects",
]

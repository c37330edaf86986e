"""Execution backends: where groups of folds run. In this process, in worker processes (joblib), or on a Dask
cluster; each yields fold records as they finish, so the caller saves every finished fold at once. The torch
thread setting of this process is restored afterwards.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from joblib import Parallel, delayed

from epir.config import RunConfig
from epir.data import FlowDataset
from epir.engine import folds as fold_runner
from epir.engine.folds import Choices, Fold
from epir.engine.selection import GroupTeachers, adopt_group_teachers
from epir.errors import ConfigError
from epir.profiling import torch_threads


def run_group(
    dataset: FlowDataset, cfg: RunConfig, folds: Sequence[Fold], fold_weights: str | os.PathLike | None,
    batched: bool = True, choices: Choices | None = None, teachers: GroupTeachers | None = None,
) -> list[dict[str, Any]]:
    """One group of folds in a worker process: one torch thread per worker unless ``eval.threads`` says
    otherwise, so workers do not fight over cores. ``teachers``: group teachers trained before the folds.
    """
    torch.set_num_threads(cfg.eval.threads or 1)
    adopt_group_teachers(teachers)
    if not batched:
        return [fold_runner.run_fold(dataset, cfg, subject, seed, fold_weights=fold_weights, choices=choices)
                for seed, subject in folds]
    return fold_runner.run_fold_group(dataset, cfg, folds, fold_weights, choices)


def _subset(choices: Choices | None, folds: Sequence[Fold]) -> dict[Fold, tuple[int, dict[str, Any]]] | None:
    """The choices of ``folds`` alone (what one task needs)."""
    return None if choices is None else {f: choices[f] for f in folds if f in choices}


def run_on_dask(
    address: str,
    dataset: FlowDataset,
    cfg: RunConfig,
    groups: Sequence[Sequence[Fold]],
    fold_weights: str | os.PathLike | None = None,
    batched: bool = True,
    choices: Choices | None = None,
    teachers: GroupTeachers | None = None,
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
        from distributed import Client, as_completed  # noqa: PLC0415 (optional dependency, imported when used)
    except ImportError:
        raise ConfigError(
            "eval.dask_scheduler (--dask-scheduler) needs Dask's distributed scheduler: pip install 'epir[dask]' "
            "(or pip install 'dask[distributed]') on this machine and on every worker."
        ) from None
    try:
        client = Client(address, timeout="15s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:  # ValueError: an address distributed cannot parse
        raise ConfigError(
            f"eval.dask_scheduler={address!r}: cannot connect ({e}). Start a scheduler with `dask scheduler` and "
            f"workers with `dask worker {address}`, or check the address (tcp://HOST:8786)."
        ) from None
    try:
        data = client.scatter(dataset, broadcast=True)
        tag = zlib.crc32(cfg.to_yaml().encode())
        futures = [
            client.submit(run_group, data, cfg, list(group), fold_weights, batched, _subset(choices, group), teachers,
                          key=f"epir-folds-{tag:08x}-{group[0][0]}-{group[0][1]}-{len(group)}", pure=False)
            for group in groups
        ]
        with client.as_current():
            for future in as_completed(futures):
                yield from future.result()
    finally:
        client.close()

#: ``on_status(text)``: a short description of what runs now (a progress bar's postfix).
Status = Callable[[str], None]


def run_sequential(
    dataset: FlowDataset, cfg: RunConfig, groups: Sequence[Sequence[Fold]], fold_weights: str | os.PathLike | None,
    fold_batch: int, on_status: Status | None = None, choices: Choices | None = None,
    teachers: GroupTeachers | None = None,
) -> Iterator[dict[str, Any]]:
    """Run the groups one after another in this process (``eval.threads`` torch threads when set)."""
    status = on_status or (lambda text: None)
    adopt_group_teachers(teachers)
    if cfg.eval.threads:
        torch.set_num_threads(cfg.eval.threads)
    epochs = 0 if fold_weights is not None else cfg.train.epochs
    for group in groups:
        if fold_batch > 1 and not fold_runner.trains_alone(cfg, len(group)):
            status(f"{len(group)} folds at once")
            yield from fold_runner.run_fold_group(dataset, cfg, group, fold_weights, choices)
            continue
        seed, subject = group[0]
        status(f"seed {seed} {subject}")

        def on_epoch(epoch: int, _s: str = subject, _seed: int = seed) -> None:
            status(f"seed {_seed} {_s} epoch {epoch + 1}/{epochs}")

        yield fold_runner.run_fold(dataset, cfg, subject, seed, fold_weights=fold_weights, on_epoch=on_epoch,
                                   choices=choices)


def run_processes(
    dataset: FlowDataset, cfg: RunConfig, groups: Sequence[Sequence[Fold]], fold_weights: str | os.PathLike | None,
    fold_batch: int, jobs: int, choices: Choices | None = None, teachers: GroupTeachers | None = None,
) -> Iterator[dict[str, Any]]:
    """Run the groups in ``jobs`` worker processes (joblib), yielding records as groups finish."""
    tasks = (delayed(run_group)(dataset, cfg, group, fold_weights, fold_batch > 1, _subset(choices, group), teachers)
             for group in groups)
    for recs in Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks):
        yield from recs


def execute(
    dataset: FlowDataset,
    cfg: RunConfig,
    groups: Sequence[Sequence[Fold]],
    *,
    fold_weights: str | os.PathLike | None = None,
    fold_batch: int = 1,
    jobs: int = 1,
    on_status: Status | None = None,
    choices: Choices | None = None,
    teachers: GroupTeachers | None = None,
) -> Iterator[dict[str, Any]]:
    """Run the groups on the backend the config asks for: Dask (``eval.dask_scheduler``), worker processes
    (``jobs > 1`` and more than one group) or this process; yield each fold's record as it finishes.
    ``choices``: selections made before the folds (``train.select_shared``), passed to each fold; ``teachers``:
    group teachers trained before the folds (``train.distill_shared``), given to every process that runs folds.

    This process's torch thread count is restored when the iteration ends (or is abandoned).
    """
    status = on_status or (lambda text: None)
    with torch_threads(None):  # as they are now, and so again when the iteration ends or is abandoned
        if cfg.eval.dask_scheduler and groups:
            status(f"dask {cfg.eval.dask_scheduler}")
            yield from run_on_dask(cfg.eval.dask_scheduler, dataset, cfg, groups, fold_weights, fold_batch > 1,
                                   choices, teachers)
        elif jobs > 1 and len(groups) > 1:
            status(f"{jobs} workers, {fold_batch} folds at once" if fold_batch > 1 else f"{jobs} workers")
            yield from run_processes(dataset, cfg, groups, fold_weights, fold_batch, jobs, choices, teachers)
        else:
            yield from run_sequential(dataset, cfg, groups, fold_weights, fold_batch, status, choices, teachers)


"""One LOSO fold, or a group of folds trained at once as one vectorised model.

A fold holds one subject out: ``fit`` (or :func:`~epir.engine.batched.fit_many`) receives the other subjects' rows
only; selection inside the fold, ensemble members and a distillation teacher see those rows alone. The fold's
record (:func:`fold_record`) holds the held-out rows, their labels, predictions and probabilities. Which folds train
together is planned by :func:`plan_groups`; where they run is :mod:`epir.engine.backends`.
"""
from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epir.config import RunConfig
from epir.data import FlowDataset
from epir.engine.batched import Member, alone_trains_batched, fit_many
from epir.engine.selection import (
    blend_groups,
    candidate_configs,
    group_teacher,
    member_configs,
    member_seeds,
    mix_teacher,
    select_in_fold,
    select_shared,
    teacher_proba,
    train_models,
    train_teachers,
)
from epir.engine.train import InputNorm, SnapshotMean, Teacher, fit, predict_proba, snapshot_callback, steps_per_epoch
from epir.errors import ConfigError, DatasetNotFoundError
from epir.models import auto_fold_batch, build_model, is_batchable


def fold_seed(seed: int, subject: str) -> int:
    """Seed of one fold's model init and batches: depends only on the run seed and the subject."""
    return (seed * 1_000_003 + zlib.crc32(subject.encode())) % (2**31 - 1)


Fold = tuple[int, str]  # (seed, subject)

#: Choices made before the folds run (``train.select_shared``): ``{(seed, subject): (candidate index, record)}``.
Choices = Mapping[Fold, tuple[int, dict[str, Any]]]


def choose_recipe(
    dataset: FlowDataset, cfg: RunConfig, seed: int, subject: str, train_idx: np.ndarray,
    choices: Choices | None = None, *, batched: bool = True,
) -> tuple[RunConfig, dict[str, Any]]:
    """The recipe the fold holding out ``subject`` (training rows ``train_idx``) trains: ``train.select``'s choice
    on training subjects alone, and the record of the choice; ``cfg`` and ``{}`` without ``train.select``. With
    ``train.select_shared`` the choice comes from ``choices`` (made once for the run by
    :func:`~epir.engine.selection.select_shared`) or is made now for this subject's group alone.
    """
    if not cfg.train.select:
        return cfg, {}
    if cfg.train.select_shared:
        if choices is not None and (seed, subject) in choices:
            chosen, info = choices[(seed, subject)]
        else:
            chosen, info = select_shared(dataset, cfg, seed, [subject], batched=batched)[subject]
        return candidate_configs(cfg)[chosen], info
    return select_in_fold(dataset, cfg, train_idx, fold_seed(seed, subject), name=f"fold {subject} seed {seed}",
                          batched=batched)


def fold_teachers(
    dataset: FlowDataset, cfg: RunConfig, folds: Sequence[tuple[int, str, np.ndarray]], *, batched: bool = True
) -> list[Teacher] | None:
    """With ``train.distill``, the teacher of each ``(seed, subject, training rows)`` fold: trained on those rows
    alone, or with ``train.distill_shared`` its teacher group's (:func:`~epir.engine.selection.group_teacher`;
    ``train.distill_groups``); None without distillation.
    """
    if not cfg.train.distill:
        return None
    if cfg.train.distill_shared:
        return [group_teacher(dataset, cfg, seed, subject) for seed, subject, _ in folds]
    return train_teachers(dataset, cfg, [(idx, fold_seed(seed, subject), f"fold {subject} seed {seed}")
                                         for seed, subject, idx in folds], batched=batched)


#: The stream of :func:`training_subjects`' draw, apart from the fold's model seed (:func:`fold_seed`).
_SUBJECT_DRAW = 1


def training_subjects(dataset: FlowDataset, subject: str, fraction: float = 1.0, seed: int = 0) -> list[str]:
    """The subjects the fold holding out ``subject`` trains on, sorted: every other subject, or with ``fraction``
    < 1 (``train.subject_fraction``, for learning curves) ``max(1, round(fraction * n))`` of the ``n`` others, drawn
    by a permutation seeded by the run seed and the held-out subject alone. The draws are nested: the same seed and
    subject keep the first subjects of one permutation, so a smaller share's subjects are among a larger one's.
    """
    others = sorted(set(dataset.subjects) - {subject})
    if fraction >= 1:
        return others
    n = max(1, int(np.floor(fraction * len(others) + 0.5)))
    order = np.random.default_rng([fold_seed(seed, subject), _SUBJECT_DRAW]).permutation(len(others))
    return sorted(others[i] for i in order[:n])


def fold_split(dataset: FlowDataset, subject: str, fraction: float = 1.0, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) of the fold holding out ``subject``: every other subject's rows (with ``fraction`` < 1,
    those of :func:`training_subjects`' share of them), and its own.
    """
    subjects = np.asarray(dataset.subjects)
    test_idx = np.flatnonzero(subjects == subject)
    if fraction >= 1:
        return np.flatnonzero(subjects != subject), test_idx
    return np.flatnonzero(np.isin(subjects, training_subjects(dataset, subject, fraction, seed))), test_idx


def fold_record(
    seed: int, subject: str, test_idx: np.ndarray, true: torch.Tensor, probs: torch.Tensor, epoch: int | None,
    seconds: float, n_train: int, train_subjects: Sequence[str] = (),
) -> dict[str, Any]:
    """The fold file's record: the held-out rows, their labels, predictions and probabilities; with
    ``train_subjects`` (a share of them, ``train.subject_fraction`` < 1), the subjects it trained on as well.
    """
    rec: dict[str, Any] = {
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
    if train_subjects:
        rec["train_subjects"] = list(train_subjects)
    return rec


def drawn_subjects(dataset: FlowDataset, cfg: RunConfig, train_idx: np.ndarray) -> list[str]:
    """The subjects of the fold's training rows, sorted, where ``train.subject_fraction`` < 1 drew a share of them
    (:func:`training_subjects`), for its record; ``[]`` where it trains on every other subject.
    """
    return sorted({dataset.subjects[i] for i in train_idx}) if cfg.train.subject_fraction < 1 else []


def add_teacher(rec: dict[str, Any], cfg: RunConfig, own: torch.Tensor, teacher_probs: torch.Tensor) -> None:
    """Keep a fold's teacher's own probabilities in its record (``teacher_probs``) and, where ``cfg`` (the fold's
    chosen recipe) blended them into the fold's (``train.distill_mix`` > 0), the model's own before the blend
    (``model_probs``), so that the run can say what each part scores alone.
    """
    rec["teacher_probs"] = teacher_probs.tolist()
    if cfg.train.distill_mix > 0:
        rec["model_probs"] = own.tolist()


def add_members(rec: dict[str, Any], members: Sequence[torch.Tensor]) -> None:
    """Keep each member's own held-out probabilities of an in-fold ensemble (``train.ensemble`` > 1) in its fold's
    record (``member_probs``, member order: member 0 is the plain fold's model), before their mean and any teacher's
    blend, so that the run can say what each member scores alone and where the members err.
    """
    if len(members) > 1:
        rec["member_probs"] = [m.tolist() for m in members]


class _OracleBest:
    """Optimistic protocol of the published baselines: per subject, keep the (latest) epoch with the best
    accuracy on the held-out subject. Only here, in the caller of ``fit``, does test data appear.
    """

    def __init__(self, test_x: torch.Tensor, test_y: torch.Tensor, device: str, tta: str = "none") -> None:
        self.test_x, self.test_y, self.device, self.tta = test_x, test_y, device, tta
        self.acc: float = -1.0
        self.probs: torch.Tensor | None = None
        self.epoch: int | None = None

    def update(self, epoch: int, model: torch.nn.Module, norm: InputNorm) -> None:
        p = predict_proba(model, norm, self.test_x, device=self.device, tta=self.tta)
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
    choices: Choices | None = None,
) -> dict[str, Any]:
    """Train on every subject but ``subject`` and predict ``subject``'s samples (``choices``: see
    :func:`choose_recipe`).
    """
    train_idx, test_idx = fold_split(dataset, subject, cfg.train.subject_fraction, seed)
    test = dataset.subset(test_idx)
    device = cfg.eval.device
    torch.manual_seed(fold_seed(seed, subject))
    model = build_model(cfg.model)
    t0 = time.perf_counter()
    chosen_epoch: int | None = None
    selection: dict[str, Any] = {}
    curve: list[dict[str, float]] = []  # the (first member's) training curve
    teacher_p: torch.Tensor | None = None  # train.distill: the teacher's own held-out probabilities
    member_probs: list[torch.Tensor] = []  # each member's own held-out probabilities (train.ensemble)
    if fold_weights is not None:
        path = Path(fold_weights) / f"{test.subject_ids[0]}.pth"
        if not path.is_file():
            raise DatasetNotFoundError(
                f"fold_weights (--fold-weights): {path} does not exist; expected one <subject>.pth per fold, named "
                "by the "
                f"subject id as in the dataset ({test.subject_ids[0]!r})."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for a non-weights file
            raise ConfigError(
                f"fold_weights (--fold-weights): {path} is not a file of tensors (a state dict saved with torch.save): "
                f"{type(e).__name__}. Nothing is unpickled beyond tensors; give the per-subject weights files."
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(f"fold_weights (--fold-weights): {path} holds {type(state).__name__}, not a state dict "
                              "of tensors.")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"fold_weights (--fold-weights): {path} does not fit model {cfg.model.name!r}: "
                              f"{e}") from None
        model.to(device)
        norm = InputNorm.fit(cfg.train.input_norm, dataset.x[train_idx])
        probs = predict_proba(model, norm, test.x, device=device, tta=cfg.train.tta)
    else:
        train = dataset.subset(train_idx)
        epochs: list[int | None] = []
        if cfg.train.select:  # choose the recipe on the training subjects alone, then build its model afresh
            cfg, selection = choose_recipe(dataset, cfg, seed, subject, train_idx, choices, batched=False)
            torch.manual_seed(fold_seed(seed, subject))
            model = build_model(cfg.model)
        teachers = fold_teachers(dataset, cfg, [(seed, subject, train_idx)], batched=False)
        if teachers is not None:  # the teacher used the global generator: the student starts as without one
            torch.manual_seed(fold_seed(seed, subject))
            model = build_model(cfg.model)
        members = member_configs(cfg)  # train.member_overrides: each member's own recipe
        for k, (mseed, mcfg) in enumerate(zip(member_seeds(fold_seed(seed, subject), cfg.train.ensemble), members)):
            if k > 0 or mcfg.model != cfg.model:  # the first member is the model built above (so one member is the
                # plain fold), unless its own model arguments make it another network (built from the same seed)
                torch.manual_seed(mseed)
                model = build_model(mcfg.model)
            oracle = _OracleBest(test.x, test.y, device, cfg.train.tta) if cfg.eval.oracle_epoch else None
            snaps = SnapshotMean(test.x, mcfg.train, device)

            def epoch_done(epoch: int, m: torch.nn.Module, norm: InputNorm, _o: _OracleBest | None = oracle,
                           _s: SnapshotMean = snaps) -> None:
                if _o is not None:
                    _o.update(epoch, m, norm)
                _s.update(epoch, m, norm)
                if on_epoch is not None:
                    on_epoch(epoch)

            norm = fit(
                model,
                train.x,
                train.y,
                mcfg.train,
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
                member_probs.append(snaps.mean(predict_proba(model, norm, test.x, device=device, tta=cfg.train.tta)))
                epochs.append(mcfg.train.epochs - 1)
        probs = torch.stack(member_probs).mean(dim=0)  # the ensemble: mean of the members' probabilities
        chosen_epoch = epochs[0]
        own = probs
        if teachers is not None:  # the teacher's own predictions are kept; train.distill_mix blends them in
            teacher_p = teacher_proba(cfg, teachers[0], test.x)
            probs = mix_teacher(cfg, probs, teacher_p)
    rec = fold_record(seed, subject, test_idx, test.y, probs, chosen_epoch, time.perf_counter() - t0, len(train_idx),
                      drawn_subjects(dataset, cfg, train_idx))
    if teacher_p is not None:
        add_teacher(rec, cfg, own, teacher_p)
    add_members(rec, member_probs)
    if selection:
        rec["selection"] = selection
    if curve:
        rec["curve"] = _curve_dict(curve)
    return rec


def trains_alone(cfg: RunConfig, n_folds: int) -> bool:
    """Whether a group of ``n_folds`` folds trains through :func:`run_fold` (the loop) rather than at once: one
    fold with one member, on a device where a model alone trains in the loop
    (:func:`~epir.engine.batched.alone_trains_batched`: the CPU, where both give the same model).
    """
    return n_folds == 1 and cfg.train.ensemble == 1 and not alone_trains_batched(cfg.eval.device)


def run_fold_group(
    dataset: FlowDataset,
    cfg: RunConfig,
    folds: Sequence[Fold],
    fold_weights: str | os.PathLike | None = None,
    choices: Choices | None = None,
) -> list[dict[str, Any]]:
    """Train the ``(seed, subject)`` folds of one group at once (``epir.engine.batched.fit_many``) and return
    their records; a group that :func:`trains_alone` (or ``fold_weights``) runs :func:`run_fold`. Each member of the
    group gets exactly its own fold's training rows; its held-out subject's rows are only predicted, after training
    (or per epoch under the optimistic ``eval.oracle_epoch``).
    """
    if trains_alone(cfg, len(folds)) or fold_weights is not None:
        return [run_fold(dataset, cfg, subject, seed, fold_weights=fold_weights, choices=choices)
                for seed, subject in folds]

    device = cfg.eval.device
    t0 = time.perf_counter()
    splits = [fold_split(dataset, subject, cfg.train.subject_fraction, seed) for seed, subject in folds]
    k_members = cfg.train.ensemble
    # Selection inside each fold (training subjects only), then one training per chosen candidate.
    chosen: list[tuple[int, RunConfig]] = []
    selections: list[dict[str, Any]] = []
    for (seed, subject), (train_idx, _) in zip(folds, splits):
        if cfg.train.select:
            c, info = choose_recipe(dataset, cfg, seed, subject, train_idx, choices)
            chosen.append((info["chosen"], c))
        else:
            c, info = cfg, {}
            chosen.append((-1, cfg))
        selections.append(info)
    # Folds whose chosen candidates differ only in the blend (train.distill_mix) train the same models: one batch.
    shared = blend_groups(candidate_configs(cfg)) if cfg.train.select else []
    keys = [shared[k] if k >= 0 else k for k, _ in chosen]
    tests = [(dataset.x[test_idx], dataset.y[test_idx]) for _, test_idx in splits]
    # Per fold, per member index: the member's held-out probabilities and last (or oracle) epoch.
    member_probs: list[dict[int, torch.Tensor]] = [{} for _ in folds]
    member_epochs: list[dict[int, int]] = [{} for _ in folds]
    curves: list[list[dict[str, float]]] = [[] for _ in folds]  # each fold's first member's training curve
    teacher_p: list[torch.Tensor | None] = [None for _ in folds]  # train.distill: the teacher's own predictions
    for key in sorted(set(keys)):
        idx = [f for f, k in enumerate(keys) if k == key]
        ccfg = chosen[idx[0]][1]  # trains as every fold of idx does; each fold's own blend is applied below
        trained = fold_teachers(dataset, ccfg, [(*folds[f], splits[f][0]) for f in idx])
        for f, teacher in zip(idx, trained or []):
            teacher_p[f] = teacher_proba(ccfg, teacher, tests[f][0])
        # Members trained alike (all of them, without train.member_overrides) train in one call; members of their
        # own recipe or model arguments, one call each.
        by_recipe: dict[str, tuple[RunConfig, list[int]]] = {}
        for k, mcfg in enumerate(member_configs(ccfg)):
            by_recipe.setdefault(repr((mcfg.model, mcfg.train)), (mcfg, []))[1].append(k)
        seeds = {f: member_seeds(fold_seed(*folds[f]), k_members) for f in idx}
        for mcfg, ks in by_recipe.values():
            jobs = [
                (dataset.x[splits[f][0]], dataset.y[splits[f][0]], seeds[f][k],
                 f"fold {folds[f][1]} seed {folds[f][0]}" + (f" member {k}" if k_members > 1 else ""))
                for f in idx
                for k in ks
            ]
            slots = [(f, k) for f in idx for k in ks]
            owner = [f for f, _ in slots]
            histories = [curves[f] if k == 0 else [] for f, k in slots]
            teachers = None if trained is None else [trained[idx.index(f)] for f in owner]
            if cfg.eval.oracle_epoch:  # optimistic: per member, the epoch with the best held-out accuracy
                oracles = [_OracleBest(*tests[f], device, ccfg.train.tta) for f in owner]

                def epoch_done(epoch: int, models: list[torch.nn.Module], norms: list[InputNorm],
                               _o: list[_OracleBest] = oracles) -> None:
                    for oracle, model, norm in zip(_o, models, norms):
                        oracle.update(epoch, model, norm)

                fit_many(mcfg.model, [Member(x, y, s_, n) for x, y, s_, n in jobs], mcfg.train,
                         num_classes=dataset.num_classes, device=device, on_epoch=epoch_done, teachers=teachers,
                         histories=histories)
                for (f, k), oracle in zip(slots, oracles):
                    if oracle.probs is None or oracle.epoch is None:
                        raise ConfigError("eval.oracle_epoch: training ran no epoch (train.epochs must be >= 1).")
                    member_probs[f][k] = oracle.probs
                    member_epochs[f][k] = oracle.epoch
                continue
            snaps = [SnapshotMean(tests[f][0], mcfg.train, device) for f in owner]  # train.snapshots, per model
            models, norms = train_models(mcfg.model, mcfg.train, jobs, num_classes=dataset.num_classes, device=device,
                                         teachers=teachers, histories=histories,
                                         on_epoch=snapshot_callback(snaps))
            for (f, k), model, norm, snap in zip(slots, models, norms, snaps):
                member_probs[f][k] = snap.mean(predict_proba(model, norm, tests[f][0], device=device,
                                                             tta=ccfg.train.tta))
                member_epochs[f][k] = mcfg.train.epochs - 1
    seconds = (time.perf_counter() - t0) / len(folds)
    records = []
    for f, ((seed, subject), (train_idx, test_idx)) in enumerate(zip(folds, splits)):
        own = torch.stack([member_probs[f][k] for k in range(k_members)]).mean(dim=0)  # the ensemble: the mean of
        # its members' probabilities
        tp = teacher_p[f]
        probs = own if tp is None else mix_teacher(chosen[f][1], own, tp)
        rec = fold_record(seed, subject, test_idx, tests[f][1], probs, member_epochs[f][0], seconds, len(train_idx),
                          drawn_subjects(dataset, cfg, train_idx))
        if tp is not None:
            add_teacher(rec, chosen[f][1], own, tp)
        add_members(rec, [member_probs[f][k] for k in range(k_members)])
        if selections[f]:
            rec["selection"] = selections[f]
        if curves[f]:
            rec["curve"] = _curve_dict(curves[f])
        records.append(rec)
    return records


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
    return auto_fold_batch(cfg.model.name, cfg.eval.device), ""


def plan_groups(dataset: FlowDataset, cfg: RunConfig, todo: Sequence[Fold], fold_batch: int, workers: int = 1
                ) -> list[list[Fold]]:
    """Split the folds to run into groups trained together: folds whose training sets take the same number of
    optimizer steps per epoch, at most ``fold_batch`` per group, and (when the automatic size would leave
    workers idle) small enough that every worker gets a group.
    """
    per_fold = cfg.train.ensemble  # models trained per fold
    if fold_batch <= per_fold or len(todo) <= 1:
        return [[f] for f in todo]
    cap = fold_batch // per_fold
    workers = max(1, workers)
    # balance: about workers x rounds groups of near-equal size, so that no worker is left with one group more
    # (68 folds, 2 workers, 4 at once: 18 groups of 4 or 3, not 17 of 4 with one worker idle for the last)
    target = workers * math.ceil(len(todo) / (workers * cap))
    by_steps: dict[int, list[Fold]] = {}
    for seed, subject in todo:  # the fold's training rows: every other subject's, or its drawn share's
        steps = steps_per_epoch(len(fold_split(dataset, subject, cfg.train.subject_fraction, seed)[0]),
                                cfg.train.batch_size)
        by_steps.setdefault(steps, []).append((seed, subject))
    out: list[list[Fold]] = []
    for group in by_steps.values():
        n = min(len(group), max(math.ceil(len(group) / cap), round(len(group) * target / len(todo))))
        bounds = np.linspace(0, len(group), n + 1).round().astype(int)
        out.extend(group[a:b] for a, b in zip(bounds, bounds[1:]))
    return out

"""Selection inside the fold: the honest way to choose among recipes.

``train.select`` declares candidate recipes, each a ``;``-separated list of ``KEY=VALUE`` overrides of the
run's ``train.*`` or ``model.*`` fields (``""`` is the recipe as it is). Within each outer fold, the training
subjects (never the held-out one) are split into ``train.select_k`` groups; for each candidate and each group,
a model is trained on the other training subjects and predicts that group (leave-subjects-out). The inner
predictions are pooled per candidate and scored by the mean of UF1 and UAR (MEGC2019 pooling), or with
``train.select_metric=nll`` by their log-loss; the best candidate (the first on ties) is then trained on all the
fold's training subjects and predicts the held-out subject. Each fold records the candidates, their inner scores
and the choice. With ``train.select_shared`` the inner groups are drawn once for all folds (:func:`select_shared`).

The inner models train like the outer ones: batched (``epir.engine.batched.fit_many``) when the model allows,
one at a time otherwise; each inner model's seed derives from the fold's seed, the candidate and the group.
Candidates that differ only in ``train.distill_mix`` (the teacher's weight in the predictions) share their inner
models, so choosing that weight costs one set of inner trainings.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from joblib.externals.loky import get_reusable_executor
from torch import nn

from epir.config import ModelConfig, RunConfig, TrainConfig, apply_overrides, check_ranges, parse_key_value
from epir.data import FlowDataset
from epir.engine.batched import Member, alone_trains_batched, fit_many, steps_per_epoch
from epir.engine.metrics import megc_scores
from epir.engine.train import InputNorm, SnapshotMean, Teacher, fit, predict_proba, snapshot_callback
from epir.errors import ConfigError
from epir.models import ProbabilityMean, batches_well, build_model, default_recipe, resolve_model_args

#: Keys a candidate may set (a candidate that selects again, or changes the data or protocol, is refused).
CANDIDATE_SECTIONS = ("train.", "model.")


def _with_overrides(base: RunConfig, items: Sequence[str]) -> RunConfig:
    """``base`` with the override ``items`` applied and its model's arguments resolved (how a candidate is built)."""
    c = apply_overrides(base, list(items))
    return replace(c, model=replace(c.model, args=resolve_model_args(c.model.name, c.model.args)))


def override_items(text: str) -> list[str]:
    """The ``KEY=VALUE`` items of one ``;``-separated entry of ``train.select`` or ``train.member_overrides``
    (blank items dropped; ``""`` is no override).
    """
    return [item.strip() for item in text.split(";") if item.strip()]


def _unchosen(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the choice inside the fold switched off: no ``train.select`` candidates, nor the settings that
    only the choice reads (``train.select_members``, ``train.select_repeats``).
    """
    return replace(cfg, train=replace(cfg.train, select=(), select_members=False, select_repeats=1))


def candidate_configs(cfg: RunConfig) -> list[RunConfig]:
    """The run config of each ``train.select`` candidate (selection itself switched off in each)."""
    base = _unchosen(cfg)
    out = []
    for text in cfg.train.select:
        items = override_items(text)
        for item in items:
            key, _ = parse_key_value(item, "train.select", "train.epochs=20")
            if not key.startswith(CANDIDATE_SECTIONS) or key.startswith(("train.select", "train.ensemble",
                                                                         "train.member_overrides",
                                                                         "train.subject_fraction")):
                raise ConfigError(
                    f"train.select candidate {text!r}: {key!r} cannot vary inside the fold; a candidate sets "
                    f"train.* or model.* fields (not train.select*, train.ensemble, train.member_overrides or "
                    f"train.subject_fraction), e.g. 'train.epochs=20;train.average=swa'."
                )
        candidate = _with_overrides(base, items)
        try:  # a candidate of 0 epochs trained nothing, was scored and could be chosen
            check_ranges(candidate)
        except ConfigError as e:
            raise ConfigError(f"train.select candidate {text!r}: {e}") from None
        out.append(candidate)
    return out


#: Settings of the fold, not of one ensemble member, which ``train.member_overrides`` may not set: the fold's
#: ensemble, choice, teacher, subjects, snapshots and test-time flips, and which model it is and what data it takes.
MEMBER_FIXED = ("train.ensemble", "train.member_overrides", "train.select", "train.distill", "train.subject_fraction",
                "train.snapshots", "train.tta", "model.name", "model.num_classes", "model.in_channels",
                "model.image_size")


def member_configs(cfg: RunConfig) -> list[RunConfig]:
    """The run config each of a fold's ``train.ensemble`` members trains and predicts with, in member order:
    ``cfg`` for every member, or with ``train.member_overrides`` member k's ``;``-separated overrides applied to
    ``cfg``: ``train.*`` fields of its own training (e.g. plain and recentred maps) and, from round 32, ``model.*``
    arguments of the run's model (e.g. ``model.shifts=none;model.patch_overlap=3``, EPIR with a window instead of
    shifted copies), resolved and checked as the model's own are. The run's parameter and FLOP totals then count
    each member's own network (:class:`epir.engine.cost.PredictionCost`'s ``members``).

    A member may not set what belongs to the fold (:data:`MEMBER_FIXED`: the ensemble, the choice inside the fold,
    the teacher, the training subjects, the snapshots and test-time flips) nor ``model.name`` or the data's shape
    (classes, input channels, map size): every member is the run's model on the run's maps (another model beside it
    is a teacher, ``train.distill`` with ``train.distill_mix``).
    """
    if not cfg.train.member_overrides:
        return [cfg] * cfg.train.ensemble
    out = []
    for k, text in enumerate(cfg.train.member_overrides):
        items = override_items(text)
        for item in items:
            key, _ = parse_key_value(item, "train.member_overrides", "train.input_norm=recentre")
            if not key.startswith(("train.", "model.")) or key.startswith(MEMBER_FIXED):
                raise ConfigError(
                    f"train.member_overrides member {k} ({text!r}): {key!r} is not one member's to set; a member "
                    f"sets train.* fields of its own training and model.* arguments of the run's model (not "
                    f"{', '.join(MEMBER_FIXED)}), e.g. 'train.input_norm=recentre;model.patch_overlap=3'."
                )
        try:  # model arguments resolved only where the member sets some: a member of train.* fields alone keeps the
            # run's model as it is, so that it compares equal to it (run_fold, run_fold_group: the same network)
            member = _with_overrides(cfg, items) if any(i.startswith("model.") for i in items) \
                else apply_overrides(cfg, items)
            check_ranges(member)
        except ConfigError as e:
            raise ConfigError(f"train.member_overrides member {k} ({text!r}): {e}") from None
        out.append(member)
    return out


def teacher_config(cfg: RunConfig) -> RunConfig:
    """The teacher's run config for ``train.distill``: its model with its default recipe and
    ``train.distill_overrides`` (the same data and protocol as the student's run).
    """
    name = cfg.train.distill
    t = replace(cfg, model=ModelConfig(name=name), train=default_recipe(name))
    t = apply_overrides(t, list(cfg.train.distill_overrides))
    if t.train.distill:
        raise ConfigError("train.distill_overrides may not make the teacher distil from another teacher.")
    if t.train.subject_fraction != 1:
        raise ConfigError("train.distill_overrides may not set train.subject_fraction: the teacher trains on the "
                          "fold's training rows, whose share the student's train.subject_fraction sets.")
    try:
        check_ranges(t)
    except ConfigError as e:
        raise ConfigError(f"the teacher's recipe ({name}'s default with train.distill_overrides): {e}") from None
    return replace(t, model=replace(t.model, args=resolve_model_args(name, t.model.args)))


def train_teachers(
    dataset: FlowDataset,
    cfg: RunConfig,
    folds: Sequence[tuple[np.ndarray, int, str]],
    *,
    batched: bool = True,
) -> list[Teacher] | None:
    """With ``train.distill``, one teacher per ``(train_idx, fold_seed, name)``, trained on those rows alone
    (its cost is part of the fold's); None without distillation. With ``train.distill_members`` = K > 1 each
    teacher is K seeds of the teacher's recipe as one :class:`~epir.models.ProbabilityMean`.
    """
    if not cfg.train.distill:
        return None
    t = teacher_config(cfg)
    k = cfg.train.distill_members
    seeds = partial(member_seeds, members=k, setting="train.distill_members")
    jobs = [(dataset.x[idx], dataset.y[idx], mseed, f"{name} teacher" + (f" {j}" if k > 1 else ""))
            for idx, seed, name in folds
            for j, mseed in enumerate(seeds((seed + zlib.crc32(b"teacher")) % (2**31 - 1)))]
    models, norms = train_models(t.model, t.train, jobs, num_classes=dataset.num_classes, device=cfg.eval.device,
                                 batched=batched)
    if k == 1:
        return list(zip(models, norms))
    # train.distill_members: the members of one fold saw the same rows, so their input normalisation is one
    return [(ProbabilityMean(models[i:i + k]), norms[i]) for i in range(0, len(models), k)]


def member_seeds(base: int, members: int, *, setting: str = "train.ensemble") -> list[int]:
    """Seeds of a fold's ensemble members (``train.ensemble``, ``train.distill_members``): ``base`` first, so that
    one member is the plain fold's model. ``setting`` names the count in the error for fewer than one member.
    """
    if members < 1:
        raise ConfigError(f"{setting} must be >= 1 (models per fold), got {members}.")
    return [(base + 7919 * k) % (2**31 - 1) for k in range(members)]


def teacher_proba(cfg: RunConfig, teacher: Teacher, x: torch.Tensor) -> torch.Tensor:
    """A fold's teacher's own class probabilities on raw maps ``x``, predicted as its recipe predicts (its
    ``train.tta``).
    """
    model, norm = teacher
    return predict_proba(model, norm, x, device=cfg.eval.device, tta=teacher_config(cfg).train.tta)


def mix_teacher(cfg: RunConfig, probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """The fold's probabilities with ``train.distill_mix`` = m: ``(1 - m) * probs + m * teacher_probs``."""
    m = cfg.train.distill_mix
    return probs if m == 0 else (1.0 - m) * probs + m * teacher_probs


def _deal(subjects: Sequence[str], k: int, seed: int, key: str) -> list[list[str]]:
    """Distinct ``subjects`` in ``k`` groups: a seeded shuffle dealt round-robin (``key`` names the setting)."""
    subjects = sorted(set(subjects))
    if len(subjects) < k:
        raise ConfigError(f"{key}={k} needs at least {k} subjects to split, got {len(subjects)}; lower {key}.")
    order = np.random.default_rng(seed).permutation(len(subjects))
    return [[subjects[i] for i in order[j::k]] for j in range(k)]


def inner_groups(subjects: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """Split the training subjects into ``k`` groups (a seeded shuffle dealt round-robin)."""
    if k < 2:
        raise ConfigError(f"train.select_k must be >= 2 (inner leave-subjects-out groups), got {k}.")
    return _deal(subjects, k, seed, "train.select_k")


def train_models(
    model_cfg: ModelConfig,
    recipe: TrainConfig,
    jobs: list[tuple[torch.Tensor, torch.Tensor, int, str]],
    *,
    num_classes: int,
    device: str = "cpu",
    batched: bool = True,
    teachers: Sequence[Teacher] | None = None,
    histories: Sequence[list[dict[str, float]]] | None = None,
    on_epoch: Callable[[int, int, nn.Module, InputNorm], None] | None = None,
) -> tuple[list[nn.Module], list[InputNorm]]:
    """Train one model per ``(x, y, seed, name)`` job with one architecture and recipe: batched in groups of
    equal steps per epoch when ``batched`` and the model batches well on ``device`` (``batches_well``: on CUDA, not
    on the CPU), a single job included off the CPU, else one at a time; with ``teachers`` (one
    per job), distilling from them; ``histories`` (one list per job) receive the training curves; ``on_epoch``
    is called as ``on_epoch(job, epoch, model, norm)`` after each job's every epoch. Returns them in order.
    """
    models: list[nn.Module | None] = [None] * len(jobs)
    norms: list[InputNorm | None] = [None] * len(jobs)
    if batched and batches_well(model_cfg.name, device) and (len(jobs) > 1 or alone_trains_batched(device)):
        by_steps: dict[int, list[int]] = {}
        for i, (x, _, _, _) in enumerate(jobs):
            by_steps.setdefault(steps_per_epoch(len(x), recipe.batch_size), []).append(i)
        for idx in by_steps.values():
            members = [Member(jobs[i][0], jobs[i][1], jobs[i][2], jobs[i][3]) for i in idx]

            def each(epoch: int, ms: list[nn.Module], ns: list[InputNorm], _idx: list[int] = idx) -> None:
                if on_epoch is not None:
                    for i, m, n in zip(_idx, ms, ns):
                        on_epoch(i, epoch, m, n)

            ms, ns = fit_many(model_cfg, members, recipe, num_classes=num_classes, device=device,
                              teachers=None if teachers is None else [teachers[i] for i in idx],
                              histories=None if histories is None else [histories[i] for i in idx],
                              on_epoch=None if on_epoch is None else each)
            for i, m, n in zip(idx, ms, ns):
                models[i], norms[i] = m, n
    else:
        for i, (x, y, seed, name) in enumerate(jobs):
            torch.manual_seed(seed)
            model = build_model(model_cfg)
            norms[i] = fit(model, x, y, recipe, seed=seed, num_classes=num_classes, device=device, describe=name,
                           teacher=None if teachers is None else teachers[i],
                           history=None if histories is None else histories[i],
                           on_epoch=None if on_epoch is None else partial(on_epoch, i))
            models[i] = model
    return models, norms  # type: ignore[return-value]


Blocks = list[tuple[np.ndarray, torch.Tensor, "torch.Tensor | None"]]  # (rows, student probs, teacher probs or None)


def _inner_predictions(
    dataset: FlowDataset,
    cand: RunConfig,
    inner: list[tuple[np.ndarray, int, str]],
    held: list[np.ndarray],
    *,
    batched: bool,
    jobs: int = 1,
    members: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Train candidate ``cand``'s inner models, one per ``(training rows, seed, name)``, and predict each one's
    ``held`` rows as the outer fold predicts: the student's probabilities per model, and its teacher's
    (``train.distill``) or None.

    With ``members`` (``train.select_members``) each inner model is the candidate's whole in-fold ensemble: every
    member of :func:`member_configs` trained from the inner seed's :func:`member_seeds` (member 0 from the inner seed
    itself, so it is the model trained without ``members``), with the inner model's teacher, their probabilities
    averaged as the fold averages them. Without it, member 0's recipe alone.

    With ``jobs`` > 1 the models are dealt in contiguous shares to that many worker processes (joblib). A model
    depends only on its rows, seed and recipe, never on the models trained beside it (``epir.engine.batched``),
    so the predictions are those of one process, up to float rounding between thread counts.
    """
    n = min(jobs, len(inner))
    if n > 1:
        bounds = np.linspace(0, len(inner), n + 1).round().astype(int).tolist()
        parts = Parallel(n_jobs=n)(delayed(_inner_worker)(dataset, cand, inner[a:b], held[a:b], batched, members)
                                   for a, b in zip(bounds, bounds[1:]))
        # the workers grew by the inner models; left for the folds, loky's leak check stops them mid-run (a warning)
        get_reusable_executor().shutdown(wait=True)
        student = [p for s, _ in parts for p in s]
        shares = [t for _, t in parts]
        return student, None if shares[0] is None else [p for t in shares for p in (t or [])]
    configs = member_configs(cand) if members else [cand]
    teachers = train_teachers(dataset, cand, inner, batched=batched)
    each: list[list[torch.Tensor]] = []  # per member, per inner model: the held rows' probabilities
    for k, mcfg in enumerate(configs):
        to_train = [(dataset.x[idx], dataset.y[idx], member_seeds(seed, len(configs))[k],
                     name + (f" member {k}" if len(configs) > 1 else "")) for idx, seed, name in inner]
        snaps = [SnapshotMean(dataset.x[idx], mcfg.train, cand.eval.device) for idx in held]
        models, norms = train_models(mcfg.model, mcfg.train, to_train, num_classes=dataset.num_classes,
                                     device=cand.eval.device, batched=batched, teachers=teachers,
                                     on_epoch=snapshot_callback(snaps))
        each.append([snap.mean(predict_proba(model, norm, dataset.x[idx], device=cand.eval.device, tta=cand.train.tta))
                     for model, norm, idx, snap in zip(models, norms, held, snaps)])
    student = [torch.stack(probs).mean(dim=0) for probs in zip(*each)]  # the ensemble: its members' mean
    teacher = None if teachers is None else [teacher_proba(cand, t, dataset.x[idx]) for t, idx in zip(teachers, held)]
    return student, teacher


def _inner_worker(
    dataset: FlowDataset, cand: RunConfig, inner: list[tuple[np.ndarray, int, str]], held: list[np.ndarray],
    batched: bool, members: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """:func:`_inner_predictions`'s share in a worker process, one torch thread unless ``eval.threads`` says so."""
    torch.set_num_threads(cand.eval.threads or 1)
    return _inner_predictions(dataset, cand, inner, held, batched=batched, members=members)


def blend_groups(candidates: Sequence[RunConfig]) -> list[int]:
    """For each candidate, the index of the first candidate with the same trained models: candidates that differ
    only in how the trained models' predictions are blended (``train.distill_mix``) share their inner models.
    """
    blend_free = [replace(cand, train=replace(cand.train, distill_mix=0.0)) for cand in candidates]
    return [blend_free.index(b) for b in blend_free]  # a config holds dicts: compared by equality, not hashed


def prior_candidate(cfg: RunConfig, candidates: Sequence[RunConfig] | None = None) -> int | None:
    """Index of the ``train.select`` candidate equal to the run's own configuration (the prior that
    ``train.select_margin`` keeps unless another candidate beats it by more than the margin), or None. Raises a
    ConfigError when the margin is set and no candidate is the run's own configuration. ``candidates``: the
    :func:`candidate_configs` of ``cfg`` when the caller has them already.
    """
    candidates = candidate_configs(cfg) if candidates is None else candidates
    base = _with_overrides(_unchosen(cfg), [])  # the candidate ''
    same = [c for c, cand in enumerate(candidates) if cand == base]
    if same:
        return same[0]
    if cfg.train.select_margin > 0:
        raise ConfigError(
            f"train.select_margin={cfg.train.select_margin} keeps the run's own configuration unless a candidate "
            f"beats it, but no train.select candidate equals it (candidates: {list(cfg.train.select)}). Add one that "
            f"does (e.g. '' for the configuration as it is, or train.distill_mix={cfg.train.distill_mix}), or set "
            f"train.select_margin=0.")
    return None


def _score(dataset: FlowDataset, candidates: Sequence[RunConfig], blocks: Callable[[int], Blocks],
           name: str, metric: str, *, margin: float = 0.0, prior: int | None = None) -> dict[str, Any]:
    """Score each candidate on its pooled inner predictions (``blocks(c)``: rows with the student's and teacher's
    probabilities): ``uf1``, ``uar``, ``nll`` (mean negative log-likelihood of the true class) per candidate, and
    ``scores``, the criterion of ``train.select_metric`` as higher-is-better (mean of UF1 and UAR, or minus the
    NLL); ``chosen`` is the first best, or ``prior`` when the best beats it by no more than ``margin``
    (``train.select_margin``; the record then also holds ``prior``, ``margin`` and ``best``).
    """
    scores, uf1s, uars, nlls = [], [], [], []
    for c, cand in enumerate(candidates):
        true, pred, loglik = [], [], []
        for rows, student, teacher in blocks(c):
            probs = student if teacher is None else mix_teacher(cand, student, teacher)
            labels = dataset.y[rows]
            true += labels.tolist()
            pred += probs.argmax(1).tolist()
            loglik.append(probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12).log().flatten())
        s = megc_scores(true, pred, dataset.num_classes, absent="skip", context=f"{name} select {c}")
        uf1s.append(s["uf1"])
        uars.append(s["uar"])
        nlls.append(float(-torch.cat(loglik).mean()))
        scores.append(-nlls[-1] if metric == "nll" else (s["uf1"] + s["uar"]) / 2)
    best = int(np.argmax(scores))
    out: dict[str, Any] = {"scores": scores, "uf1": uf1s, "uar": uars, "nll": nlls, "chosen": best}
    if margin > 0 and prior is not None:
        out.update(chosen=choose_with_margin(scores, prior, margin), best=best, prior=prior, margin=margin)
    return out


def _inner_record(cfg: RunConfig) -> dict[str, int]:
    """A choice's record of how its inner models were made, where that differs from one deal of member 0's recipe
    (as before round 33): ``select_members`` = K when each inner model was the whole ensemble of K members
    (``train.select_members``), ``select_repeats`` = R when the inner groups were dealt R > 1 times
    (``train.select_repeats``).
    """
    record = {"select_members": cfg.train.ensemble} if cfg.train.select_members else {}
    if cfg.train.select_repeats > 1:
        record["select_repeats"] = cfg.train.select_repeats
    return record


def choose_with_margin(scores: Sequence[float], prior: int, margin: float) -> int:
    """The candidate ``train.select_margin`` chooses: the first best of ``scores`` (higher is better) if it beats
    ``prior``'s score by more than ``margin``, else ``prior``.
    """
    best = int(np.argmax(scores))
    return prior if scores[best] - scores[prior] <= margin else best


def select_in_fold(
    dataset: FlowDataset,
    cfg: RunConfig,
    train_idx: np.ndarray,
    fold_seed: int,
    *,
    name: str = "fold",
    batched: bool = True,
) -> tuple[RunConfig, dict[str, Any]]:
    """Choose a ``train.select`` candidate on the fold's training rows ``train_idx`` alone.

    Returns the chosen candidate's config and the record of the choice: ``candidates``, ``select_k``,
    ``select_metric``, ``scores`` (the criterion per candidate, higher is better), ``uf1``, ``uar``, ``nll``,
    ``chosen`` (index), and ``select_members`` (the members of each inner model) with ``train.select_members``.
    With ``train.select_repeats`` = R > 1 the training subjects are dealt into groups R times (the first deal as
    with one) and the candidates scored on every deal's inner predictions pooled (record: ``select_repeats``).
    """
    candidates = candidate_configs(cfg)
    if not candidates:
        return cfg, {}
    prior = prior_candidate(cfg, candidates)
    train_idx = np.asarray(train_idx)
    subjects = np.asarray(dataset.subjects)[train_idx]
    deals = [inner_groups(subjects.tolist(), cfg.train.select_k, repeat_seed(fold_seed, r))  # train.select_repeats
             for r in range(cfg.train.select_repeats)]
    held = [train_idx[np.isin(subjects, group)] for groups in deals for group in groups]
    first = blend_groups(candidates)
    trained: dict[int, tuple[list[torch.Tensor], list[torch.Tensor] | None]] = {}
    for c in sorted(set(first)):
        inner = [  # (training rows, seed, name) of each inner model: every group but one, in every deal
            (train_idx[~np.isin(subjects, group)],
             (fold_seed + zlib.crc32(_repeat_tag(f"select/{c}/{j}", r).encode())) % (2**31 - 1),
             f"{name} select {c} group {j}" + (f" repeat {r}" if r else ""))
            for r, groups in enumerate(deals) for j, group in enumerate(groups)
        ]
        trained[c] = _inner_predictions(dataset, candidates[c], inner, held, batched=batched,
                                        members=cfg.train.select_members)

    def blocks(c: int) -> Blocks:
        student, teacher = trained[first[c]]
        return [(idx, student[j], None if teacher is None else teacher[j]) for j, idx in enumerate(held)]

    metric = cfg.train.select_metric
    info = {"candidates": list(cfg.train.select), "select_k": cfg.train.select_k, "select_metric": metric,
            **_inner_record(cfg),
            **_score(dataset, candidates, blocks, name, metric, margin=cfg.train.select_margin, prior=prior)}
    return candidates[info["chosen"]], info


def shared_seed(seed: int) -> int:
    """Seed of a run seed's shared inner groups and models (``train.select_shared``)."""
    return (seed * 1_000_003 + zlib.crc32(b"select/shared")) % (2**31 - 1)


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of deal ``repeat`` of the inner groups (``train.select_repeats``): ``seed`` itself for the first deal,
    so that one deal is the choice as without repeats.
    """
    return seed if repeat == 0 else (seed + zlib.crc32(f"select/repeat/{repeat}".encode())) % (2**31 - 1)


def _repeat_tag(tag: str, repeat: int) -> str:
    """An inner model's seed tag in deal ``repeat``: ``tag`` itself in the first deal (the models as without
    repeats), ``repeat/<r>/<tag>`` in the others.
    """
    return tag if repeat == 0 else f"repeat/{repeat}/{tag}"


def shared_groups(subjects: Sequence[str], g_count: int, seed: int, repeat: int = 0) -> list[list[str]]:
    """The ``train.select_shared`` = ``g_count`` groups of a run seed: the distinct ``subjects`` dealt once (the
    groups :func:`select_shared` chooses on and :func:`group_teacher` trains without); ``repeat`` > 0: another deal
    of them (``train.select_repeats``; the group teachers keep the first).
    """
    return _deal(list(subjects), g_count, repeat_seed(shared_seed(seed), repeat), "train.select_shared")


def teacher_group_count(cfg: RunConfig) -> int:
    """How many groups the group teachers (``train.distill_shared``) are dealt into: ``train.distill_groups``, or
    with 0 the ``train.select_shared`` groups the weight is chosen on.
    """
    return cfg.train.distill_groups or cfg.train.select_shared


def teacher_groups(subjects: Sequence[str], cfg: RunConfig, seed: int) -> list[list[str]]:
    """The groups of run seed ``seed`` that the group teachers are trained without: the distinct ``subjects``
    dealt into :func:`teacher_group_count` groups from the shared groups' seed, so that with 0
    (``train.distill_groups``) they are :func:`shared_groups`' first deal.
    """
    key = "train.distill_groups" if cfg.train.distill_groups else "train.select_shared"
    return _deal(list(subjects), teacher_group_count(cfg), shared_seed(seed), key)


#: Group teachers already trained in this process (``train.distill_shared``), by :func:`_group_teacher_key`.
_GROUP_TEACHERS: dict[tuple[Any, ...], Teacher] = {}


def _group_teacher_key(dataset: FlowDataset, cfg: RunConfig, seed: int, group: int) -> tuple[Any, ...]:
    """What a group teacher depends on: the data (its content, not the object), the teacher's recipe, the member
    count, the groups and the run seed.
    """
    t = teacher_config(cfg)
    data = (zlib.crc32(dataset.x.numpy().tobytes()), zlib.crc32(dataset.y.numpy().tobytes()),
            zlib.crc32("\n".join(dataset.subjects).encode()))
    return (*data, repr(t.model), repr(t.train), cfg.train.distill_members, teacher_group_count(cfg), seed, group)


#: Group teachers by :func:`_group_teacher_key`, as :func:`shared_teachers` returns them.
GroupTeachers = dict[tuple[Any, ...], Teacher]


def _group_index(dataset: FlowDataset, cfg: RunConfig, seed: int, subject: str) -> int:
    """The teacher group (:func:`teacher_groups`, run seed ``seed``) that holds ``subject``."""
    groups = teacher_groups(dataset.subjects, cfg, seed)
    g = next((j for j, group in enumerate(groups) if subject in group), None)
    if g is None:
        raise ConfigError(f"train.distill_shared: subject {subject!r} is not in the dataset {dataset.name!r}.")
    return g


def _train_group_teacher(dataset: FlowDataset, cfg: RunConfig, seed: int, g: int) -> Teacher:
    """Group ``g``'s teacher (run seed ``seed``), trained now on the other groups' rows, one network at a time."""
    groups = teacher_groups(dataset.subjects, cfg, seed)
    rows = np.flatnonzero(~np.isin(np.asarray(dataset.subjects), groups[g]))
    teacher_seed = (shared_seed(seed) + zlib.crc32(f"teacher/group/{g}".encode())) % (2**31 - 1)
    trained = train_teachers(dataset, cfg, [(rows, teacher_seed, f"seed {seed} group {g}")], batched=False)
    assert trained is not None  # train.distill_shared is checked to come with train.distill
    return trained[0]


def group_teacher(dataset: FlowDataset, cfg: RunConfig, seed: int, subject: str) -> Teacher:
    """``train.distill_shared``: the teacher of the fold holding out ``subject`` (run seed ``seed``), trained on the
    subjects outside its teacher group (:func:`teacher_groups`: the groups :func:`select_shared` deals, or with
    ``train.distill_groups`` groups of their own) and shared by every fold of that group. The held-out subject's
    whole group takes no part in it. Trained one network at a time, so that it is the same whichever process trains
    it first; kept for the process's later folds of the group (or given to it beforehand by
    :func:`adopt_group_teachers`).
    """
    g = _group_index(dataset, cfg, seed, subject)
    key = _group_teacher_key(dataset, cfg, seed, g)
    if key not in _GROUP_TEACHERS:
        _GROUP_TEACHERS[key] = _train_group_teacher(dataset, cfg, seed, g)
    return _GROUP_TEACHERS[key]


def _group_teacher_worker(dataset: FlowDataset, cfg: RunConfig, seed: int, g: int
                          ) -> tuple[tuple[Any, ...], Teacher]:
    """One group teacher in a worker process, one torch thread unless ``eval.threads`` says so (as the folds')."""
    torch.set_num_threads(cfg.eval.threads or 1)
    return _group_teacher_key(dataset, cfg, seed, g), _train_group_teacher(dataset, cfg, seed, g)


def shared_teachers(dataset: FlowDataset, cfg: RunConfig, folds: Sequence[tuple[int, str]], *, jobs: int = 1
                    ) -> GroupTeachers:
    """``train.distill_shared``: every group teacher the ``(seed, subject)`` folds need, each trained once, in
    ``jobs`` worker processes, for :func:`adopt_group_teachers` in the processes that run the folds. Without it
    each fold process trains every group teacher its folds need, so two workers trained each one twice. A teacher
    depends only on its rows, seed and recipe (one network at a time), so it is the one a fold would train.
    ``{}`` without ``train.distill_shared`` or with ``jobs`` = 1 (the folds' process trains each once anyway).
    """
    if not (cfg.train.distill and cfg.train.distill_shared) or jobs <= 1:
        return {}
    needed = sorted({(seed, _group_index(dataset, cfg, seed, subject)) for seed, subject in folds})
    if len(needed) <= 1:
        return {}
    parts = Parallel(n_jobs=min(jobs, len(needed)))(delayed(_group_teacher_worker)(dataset, cfg, seed, g)
                                                    for seed, g in needed)
    get_reusable_executor().shutdown(wait=True)  # as after the inner pairs: loky's leak check would stop them later
    return dict(parts)


def adopt_group_teachers(teachers: GroupTeachers | None) -> None:
    """Keep ``teachers`` (from :func:`shared_teachers`) for this process's folds: :func:`group_teacher` serves them
    instead of training them again.
    """
    if teachers:
        _GROUP_TEACHERS.update(teachers)


def select_shared(
    dataset: FlowDataset,
    cfg: RunConfig,
    seed: int,
    subjects: Sequence[str],
    *,
    batched: bool = True,
    jobs: int = 1,
) -> dict[str, tuple[int, dict[str, Any]]]:
    """Choose a ``train.select`` candidate for the folds holding out each of ``subjects`` (run seed ``seed``),
    with inner groups shared by all folds (``train.select_shared`` = G); the inner models are trained in ``jobs``
    worker processes (``epir loso`` passes ``eval.jobs``), with the same choices as in one.

    All the dataset's subjects are dealt once into G groups. The fold holding out a subject of group g scores
    the candidates on every other group h, predicted by a model trained on the groups other than g and h: the
    held-out subject's whole group takes no part, neither in inner training nor in inner scoring, and the model
    of the pair {g, h} serves both groups' folds. The G(G-1)/2 pair models (G-1 per outer group) replace the
    ``select_k`` inner models of every fold; folds of one group share their choice.

    With ``train.select_repeats`` = R > 1 the subjects are dealt R times (the first deal as with one); a fold scores
    on the inner predictions of every deal pooled, each deal's pair models trained without the held-out subject's
    group of that deal, so folds share a choice where they share their group in every deal.

    Returns ``{subject: (chosen index, record)}``; the record holds ``candidates``, ``select_shared``,
    ``group`` (the held-out subject's), ``select_metric``, ``scores``, ``uf1``, ``uar``, ``nll`` and ``chosen``
    (and ``select_members`` with ``train.select_members``; ``select_repeats`` and ``groups``, the subject's group in
    each deal, with ``train.select_repeats``).
    """
    candidates = candidate_configs(cfg)
    g_count = cfg.train.select_shared
    if not candidates:
        return {}
    prior = prior_candidate(cfg, candidates)
    if g_count < 3:
        raise ConfigError(f"train.select_shared must be >= 3 to share inner groups between folds, got {g_count}.")
    every = np.asarray(dataset.subjects)
    base = shared_seed(seed)
    deals = [shared_groups(dataset.subjects, g_count, seed, r) for r in range(cfg.train.select_repeats)]
    group_of = [{s: j for j, group in enumerate(groups) for s in group} for groups in deals]
    missing = sorted(set(subjects) - set(group_of[0]))
    if missing:
        raise ConfigError(f"select_shared: subjects {missing} are not in the dataset {dataset.name!r}.")
    rows = [[np.flatnonzero(np.isin(every, group)) for group in groups] for groups in deals]
    pairs: list[tuple[int, int, int]] = []  # (deal, a, b): the inner model trained without groups a and b of a deal
    for r in range(len(deals)):
        outer = sorted({group_of[r][s] for s in subjects})
        pairs += [(r, a, b) for a, b in sorted({(min(g, h), max(g, h)) for g in outer for h in range(g_count)
                                                 if h != g})]
    first = blend_groups(candidates)
    trained: dict[int, tuple[list[torch.Tensor], list[torch.Tensor] | None]] = {}
    for c in sorted(set(first)):
        inner = [(np.flatnonzero(~np.isin(every, deals[r][a] + deals[r][b])),
                  (base + zlib.crc32(_repeat_tag(f"select/shared/{c}/{a}/{b}", r).encode())) % (2**31 - 1),
                  f"seed {seed} select {c} groups {a}+{b} out" + (f" repeat {r}" if r else "")) for r, a, b in pairs]
        held = [np.concatenate([rows[r][a], rows[r][b]]) for r, a, b in pairs]
        trained[c] = _inner_predictions(dataset, candidates[c], inner, held, batched=batched, jobs=jobs,
                                        members=cfg.train.select_members)

    # a fold's choice depends on its subject's group in every deal: folds that share them all share the choice
    choices: dict[tuple[int, ...], tuple[int, dict[str, Any]]] = {}
    for key in sorted({tuple(deal[s] for deal in group_of) for s in subjects}):
        def blocks(c: int, _key: tuple[int, ...] = key) -> Blocks:
            student, teacher = trained[first[c]]
            out: Blocks = []
            for r, g in enumerate(_key):
                for h in range(g_count):
                    if h == g:
                        continue
                    a = min(g, h)
                    p = pairs.index((r, a, max(g, h)))
                    part = slice(0, len(rows[r][a])) if h == a else slice(len(rows[r][a]), None)  # h's rows in p's
                    out.append((rows[r][h], student[p][part], None if teacher is None else teacher[p][part]))
            return out

        metric = cfg.train.select_metric
        info = {"candidates": list(cfg.train.select), "select_shared": g_count, "group": key[0],
                **({"groups": list(key)} if len(key) > 1 else {}), "select_metric": metric,
                **_inner_record(cfg),
                **_score(dataset, candidates, blocks, f"seed {seed} group {'/'.join(map(str, key))}", metric,
                         margin=cfg.train.select_margin, prior=prior)}
        choices[key] = (info["chosen"], info)
    return {s: choices[tuple(deal[s] for deal in group_of)] for s in subjects}


__all__ = [
    "GroupTeachers",
    "adopt_group_teachers",
    "blend_groups",
    "candidate_configs",
    "choose_with_margin",
    "group_teacher",
    "inner_groups",
    "member_configs",
    "member_seeds",
    "mix_teacher",
    "override_items",
    "prior_candidate",
    "repeat_seed",
    "select_in_fold",
    "select_shared",
    "shared_groups",
    "shared_seed",
    "shared_teachers",
    "teacher_config",
    "teacher_group_count",
    "teacher_groups",
    "teacher_proba",
    "train_models",
    "train_teachers",
]

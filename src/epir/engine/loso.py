"""Leave-one-subject-out evaluation: :func:`run_loso` over separate units.

- data and configuration: :mod:`epir.runsetup` (``prepare_data``, ``select_subjects``);
- one fold, or a group trained at once: :mod:`epir.engine.folds` (a fresh model per fold; ``fit`` receives the
  training subjects' samples only);
- where folds run (this process, worker processes, Dask): :mod:`epir.engine.backends`;
- the run directory: :class:`epir.engine.runstore.FoldStore` (each finished fold is written to
  ``OUT/folds/seed<S>/<subject>.json`` at once, so a run started again with the same directory skips the folds
  it already has);
- the summary: :mod:`epir.engine.results` and the files written here (curves, TensorBoard, report.html).
"""
from __future__ import annotations

import importlib
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from epir.config import RunConfig, check_ranges
from epir.data import FlowDataset
from epir.engine.agreement import agreement
from epir.engine.backends import execute
from epir.engine.cost import PredictionCost, candidate_mixes, prediction_cost
from epir.engine.folds import (
    Fold,
    fold_seed,
    fold_split,
    member_seeds,
    plan_groups,
    resolve_fold_batch,
    run_fold,
    run_fold_group,
)
from epir.engine.metrics import megc_scores
from epir.engine.report_html import write_run_report
from epir.engine.results import (
    FOLD_WEIGHTS,
    HONEST,
    ORACLE,
    format_summary,
    mean_std,
    summarize,
    write_results,
)
from epir.engine.runstore import FoldStore, fold_file
from epir.engine.selection import (
    GroupTeachers,
    candidate_configs,
    member_configs,
    select_shared,
    shared_teachers,
    teacher_config,
    teacher_group_count,
    teacher_groups,
)
from epir.engine.train import load_initial_weights, untaught_token_error
from epir.errors import ConfigError
from epir.models import AUTO_FOLD_BATCH, build_model, resolve_model_args
from epir.runsetup import (
    EXECUTION_KEYS,
    make_config,
    prepare_data,
    resolve_config,
    select_sources,
    select_subjects,
)

#: Config fields that may differ when resuming a run (execution, not protocol: ``epir.runsetup.EXECUTION_KEYS``).
RESUME_FREE = {tuple(k.split(".", 1)) for k in EXECUTION_KEYS}


def protocol_of(cfg: RunConfig, fold_weights: str | os.PathLike | None = None) -> str:
    if fold_weights is not None:
        return FOLD_WEIGHTS
    return ORACLE if cfg.eval.oracle_epoch else HONEST


def evaluation_of(cfg: RunConfig) -> str:
    """``CDE`` (one LOSO over every source) or ``SDE(casme2)`` / ``SDE(casme2+samm)`` (``data.subset``)."""
    return f"SDE({'+'.join(cfg.data.subset)})" if cfg.data.subset else "CDE"


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


def check_distill_token_recipe(cfg: RunConfig) -> None:
    """A model with a distillation token (EPIR's ``model.distill_token``) needs a teacher whose predictions reach the
    training loss (``train.distill`` with ``train.distill_weight > 0``); a one-line error otherwise.
    """
    if resolve_model_args(cfg.model.name, cfg.model.args).get("distill_token") and not (
            cfg.train.distill and cfg.train.distill_weight > 0):
        raise untaught_token_error("", f"but the recipe has none (train.distill={cfg.train.distill!r}, "
                                       f"train.distill_weight={cfg.train.distill_weight:g})")


def check_before_training(cfg: RunConfig) -> None:
    """Every error a run can know of before it trains anything: options that exclude each other, malformed
    selection candidates, ensemble members or teacher, a distillation token without a teacher, a missing or
    mismatched ``train.init``, a missing TensorBoard.
    """
    if cfg.eval.tensorboard:
        _summary_writer()
    if cfg.train.select and cfg.eval.oracle_epoch:
        raise ConfigError(
            "train.select (selection inside the fold, on training subjects) and eval.oracle_epoch (the epoch "
            "picked on the held-out subject) exclude each other: use one. The default recipes of epir choose inside "
            "the fold; for the oracle protocol pick a recipe without train.select (--recipe alone) or set "
            "train.select=[]."
        )
    if cfg.train.snapshots > 1 and cfg.eval.oracle_epoch:
        raise ConfigError(
            f"train.snapshots={cfg.train.snapshots} (probabilities averaged over fixed epochs) and "
            "eval.oracle_epoch (one epoch picked on the held-out subject) exclude each other: set train.snapshots=1 "
            "or drop --oracle-epoch."
        )
    for candidate in candidate_configs(cfg) if cfg.train.select else [cfg]:
        check_distill_token_recipe(candidate)
        # train.member_overrides: each member's recipe is checked before anything runs, and a member with model
        # arguments of its own is built once, so that a combination its model refuses stops here, naming the member
        for k, member in enumerate(member_configs(candidate)):
            if member.model == candidate.model:
                continue
            try:
                check_distill_token_recipe(member)
                build_model(member.model)
            except ConfigError as e:
                raise ConfigError(f"train.member_overrides member {k} "
                                  f"({candidate.train.member_overrides[k]!r}): {e}") from None
    if cfg.train.distill:
        teacher_config(cfg)
    if cfg.train.init:
        for model in {repr(m.model): m.model for m in member_configs(cfg)}.values():  # each member's network
            load_initial_weights(build_model(model), cfg.train.init)


def _seed_mean_scores(cfg: RunConfig, dataset: FlowDataset, records: Sequence[dict[str, Any]],
                      probs: Sequence[Sequence[Sequence[float]]], seeds: Sequence[int], context: str
                      ) -> dict[str, float]:
    """UF1 and UAR of ``probs`` (one list of rows per record, e.g. a teacher's), pooled per seed, then averaged over
    the seeds, with their spread over the seeds (``uf1_std``, ``uar_std``).
    """
    scores = []
    for s in seeds:
        mine = [(r, p) for r, p in zip(records, probs) if r["seed"] == s]
        if mine:
            scores.append(megc_scores([y for r, _ in mine for y in r["true"]],
                                      [int(np.argmax(row)) for _, p in mine for row in p],
                                      dataset.num_classes, absent=cfg.eval.absent_class, context=context))
    out: dict[str, float] = {}
    for key in ("uf1", "uar"):
        out[key], out[f"{key}_std"] = mean_std([s[key] for s in scores])
    return out


def part_table(records: Sequence[dict[str, Any]], probs: Sequence[Sequence[Sequence[float]]],
               class_names: Sequence[str]) -> pd.DataFrame:
    """One part of a blended run (its model alone, or its teacher) as a predictions table: a row per record and
    sample with ``seed, subject, clip, true, predicted`` and ``prob_<class>``, from ``probs`` (one list of rows per
    record). ``clip`` is the record's ``clips`` entry, or the sample's row index in a record without them.
    """
    rows = [(r["seed"], r["subject"], clip, int(y), int(np.argmax(row)), *map(float, row))
            for r, p in zip(records, probs)
            for clip, y, row in zip(r.get("clips") or [str(i) for i in r["indices"]], r["true"], p)]
    return pd.DataFrame(rows, columns=["seed", "subject", "clip", "true", "predicted",
                                       *(f"prob_{c}" for c in class_names)])


def _parts_agreement(dataset: FlowDataset, records: Sequence[dict[str, Any]],
                     own: Sequence[Sequence[Sequence[float]]]) -> dict[str, Any]:
    """:func:`epir.engine.agreement.agreement` of the folds' model alone (``own``) and their teacher."""
    return agreement(part_table(records, own, dataset.class_names),
                     part_table(records, [r["teacher_probs"] for r in records], dataset.class_names),
                     class_names=dataset.class_names, names=("model", "teacher"))


def _member_facts(cfg: RunConfig, dataset: FlowDataset, records: Sequence[dict[str, Any]], seeds: Sequence[int],
                  cost: PredictionCost) -> list[dict[str, Any]]:
    """Each member of the folds' in-fold ensembles (``member_probs``) alone: its overrides (``train.member_overrides``,
    ``""`` for the run's recipe), its own network's parameters and forward FLOPs per sample (``params``, ``flops``,
    from the run's ``cost``; members with model arguments of their own differ), its held-out UF1 and UAR (pooled per
    seed, mean and spread over the seeds) and, from member 1 on, where it errs against member 0
    (``versus_member_0``, :func:`epir.engine.agreement.agreement`).
    """
    overrides = list(cfg.train.member_overrides) or [""] * cfg.train.ensemble
    first = part_table(records, [r["member_probs"][0] for r in records], dataset.class_names)
    out = []
    for k, (entry, (params, flops)) in enumerate(zip(overrides, cost.members)):
        probs = [r["member_probs"][k] for r in records]
        row: dict[str, Any] = {"member": k, "overrides": entry, "params": params, "flops": flops,
                               **_seed_mean_scores(cfg, dataset, records, probs, seeds, f"member {k}")}
        if k > 0:
            row["versus_member_0"] = agreement(part_table(records, probs, dataset.class_names), first,
                                               class_names=dataset.class_names, names=(f"member {k}", "member 0"))
        out.append(row)
    return out


def model_probs_of(rec: dict[str, Any], mixes: Sequence[float], cfg: RunConfig) -> list[list[float]] | None:
    """A fold's model's own probabilities before its teacher's blend: its ``model_probs``, or its ``probs`` where
    the fold's weight was 0; None for a blended fold written before round 17 (it kept only the blend).
    """
    if "model_probs" in rec:
        return list(rec["model_probs"])
    chosen = rec.get("selection", {}).get("chosen") if cfg.train.select else None
    mix = mixes[chosen] if chosen is not None else cfg.train.distill_mix
    return list(rec["probs"]) if mix == 0 else None


def run_facts(cfg: RunConfig, dataset: FlowDataset, records: Sequence[dict[str, Any]], seeds: Sequence[int],
              subjects: Sequence[str]) -> dict[str, Any]:
    """What ``results.json`` says of the run beside its scores: model, size, cost, selection choices."""
    cost = prediction_cost(cfg, dataset.x.shape[1:])
    facts: dict[str, Any] = {
        "evaluation": evaluation_of(cfg),
        "model": cfg.model.name,
        "dataset": dataset.name,
        "n": sum(len(r["indices"]) for r in records) // max(1, len(seeds)),
        "n_folds": len(subjects),
        "params": cost.params,
        # every network that predicts a fold: an in-fold ensemble's members, each member's snapshots, a mixed-in
        # teacher (epir.engine.cost)
        "params_total": cost.params_total,
        "flops_per_sample": cost.flops,
        # one whole prediction: the input transform, every network that predicts, each of its forward passes
        "flops_total": cost.flops_total,
        "fold_seconds": float(np.mean([r["seconds"] for r in records])) if records else 0.0,
    }
    taught = [r for r in records if r.get("teacher_probs") is not None]
    if cfg.train.distill:  # the teacher is counted separately; it predicts too when train.distill_mix > 0
        # with train.select, the weight is each fold's choice: "mix" is the base config's, the folds' choices are
        # counted in "selection"; the teacher counts in the totals when any candidate lets it predict
        mixes = candidate_mixes(cfg)
        facts["teacher"] = {"model": cfg.train.distill, "members": cfg.train.distill_members,
                            "shared": cfg.train.distill_shared, "params": cost.teacher_params,
                            "mix": cfg.train.distill_mix, "mix_chosen_in_fold": len(set(mixes)) > 1}
        if cfg.train.distill_shared:  # how many groups the teachers are trained without (train.distill_groups)
            facts["teacher"]["groups"] = teacher_group_count(cfg)
        picks = [mixes[r["selection"]["chosen"]] for r in records if r.get("selection")] if cfg.train.select else []
        if len(set(mixes)) > 1 and picks:  # how many folds (over all seeds) chose each weight
            facts["teacher"]["mix_counts"] = {str(m): picks.count(m) for m in sorted(set(mixes))}
        if taught:  # the teacher's own held-out scores (pooled per seed, then averaged over seeds)
            facts["teacher"].update(_seed_mean_scores(cfg, dataset, taught, [r["teacher_probs"] for r in taught],
                                                      seeds, "teacher"))
        own = [model_probs_of(r, mixes, cfg) for r in records]
        if max(mixes) > 0 and len(taught) == len(records) and all(p is not None for p in own):
            # the model's own held-out scores before the teacher's blend: what it scores alone
            facts["model_alone"] = _seed_mean_scores(cfg, dataset, records, [p or [] for p in own], seeds,
                                                     "model alone")
            # where the two parts err, on the same samples (epir evaluate RUN --agreement --parts)
            facts["parts_agreement"] = _parts_agreement(dataset, records, [p or [] for p in own])
    members = [r.get("member_probs") for r in records]
    if cfg.train.ensemble > 1 and records and all(isinstance(m, list) and len(m) == cfg.train.ensemble
                                                   for m in members):
        # an in-fold ensemble: what each member scores alone, and where each errs against member 0
        facts["members"] = _member_facts(cfg, dataset, records, seeds, cost)
    if cfg.train.subject_fraction < 1:  # a learning-curve point: each fold trained on a drawn share of its subjects
        drawn = [len(r.get("train_subjects") or ()) for r in records]
        facts["subject_fraction"] = {"fraction": cfg.train.subject_fraction,
                                     "train_subjects_mean": float(np.mean(drawn)) if drawn else 0.0,
                                     "of": len(set(dataset.subjects)) - 1}
    chosen = [r["selection"]["chosen"] for r in records if r.get("selection")]
    if chosen:
        facts["selection"] = {
            "candidates": list(cfg.train.select),
            "select_k": cfg.train.select_k,
            "select_shared": cfg.train.select_shared,
            "select_metric": cfg.train.select_metric,
            "select_margin": cfg.train.select_margin,
            "select_members": cfg.train.select_members,
            "select_repeats": cfg.train.select_repeats,
            "chosen_counts": {c: chosen.count(i) for i, c in enumerate(cfg.train.select)},
        }
        margined = [r["selection"] for r in records if r.get("selection") and "best" in r["selection"]]
        if margined:  # train.select_margin: how often the best inner score was not enough to move off the prior
            facts["selection"]["kept_prior"] = sum(s["best"] != s["chosen"] for s in margined)
    return facts


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
    dataset, transform_report = prepare_data(cfg, dataset)
    subjects = select_subjects(dataset, cfg.eval.folds)
    check_before_training(cfg)
    if cfg.train.distill and cfg.train.distill_shared and fold_weights is None:
        teacher_groups(dataset.subjects, cfg, 0)  # more teacher groups than subjects: one error before any training
    protocol = protocol_of(cfg, fold_weights)
    seeds = list(cfg.eval.seeds) if fold_weights is None else [cfg.eval.seeds[0]]
    out = Path(out_dir) if out_dir is not None else None
    store = FoldStore(out, dataset)
    try:
        store.open(cfg, protocol, fold_weights, seeds=seeds, subjects=subjects)
        t_start = time.perf_counter()
        bar = tqdm(total=len(seeds) * len(subjects), desc="LOSO folds", unit="fold", disable=not progress, leave=True)
        done, todo = store.load(seeds, subjects)
        resumed = len(done)
        bar.update(resumed)
        fold_batch, note = resolve_fold_batch(cfg, fold_weights)
        if note:
            warnings.warn(note, stacklevel=2)
        jobs = (os.cpu_count() or 1) if cfg.eval.jobs == -1 else cfg.eval.jobs  # check_ranges: >= 1 or -1
        groups = plan_groups(dataset, cfg, todo, fold_batch, workers=jobs)
        choices: dict[Fold, tuple[int, dict[str, Any]]] | None = None
        select_seconds = 0.0
        if cfg.train.select and cfg.train.select_shared and fold_weights is None and todo:
            # inner groups shared by all folds: the choices of every fold still to run, made here at once
            t_sel = time.perf_counter()
            choices = {}
            for seed in sorted({s for s, _ in todo}):
                deals = f", {cfg.train.select_repeats} deals" if cfg.train.select_repeats > 1 else ""
                bar.set_postfix_str(f"seed {seed}: selection on {cfg.train.select_shared} shared groups{deals}")
                mine = [subject for s, subject in todo if s == seed]
                choices.update({(seed, k): v for k, v in select_shared(dataset, cfg, seed, mine, jobs=jobs).items()})
            select_seconds = time.perf_counter() - t_sel
        teachers: GroupTeachers = {}
        teacher_seconds = 0.0
        if fold_weights is None and todo:  # train.distill_shared: each group teacher once, in the worker processes
            t_teach = time.perf_counter()
            if cfg.train.distill and cfg.train.distill_shared:
                bar.set_postfix_str("group teachers")
            teachers = shared_teachers(dataset, cfg, todo, jobs=1 if cfg.eval.dask_scheduler else jobs)
            teacher_seconds = time.perf_counter() - t_teach
        for rec in execute(dataset, cfg, groups, fold_weights=fold_weights, fold_batch=fold_batch, jobs=jobs,
                           on_status=bar.set_postfix_str, choices=choices, teachers=teachers):
            store.save(rec)  # at once: a later failure loses nothing finished
            done[(rec["seed"], rec["subject"])] = rec
            bar.update(1)
        records = [done[(seed, subject)] for seed in seeds for subject in subjects]
        bar.close()
        preds = predictions_frame(dataset, records)
        results = summarize(preds, dataset.class_names, protocol, cfg.eval.absent_class)
        results.update(run_facts(cfg, dataset, records, seeds, subjects))
        results.update(wall_seconds=time.perf_counter() - t_start, resumed_folds=resumed, fold_batch=fold_batch,
                       jobs=jobs)
        if choices is not None:  # the shared inner trainings: in wall_seconds, not in any fold's seconds
            results["selection"]["shared_seconds"] = select_seconds
        if teachers and "teacher" in results:
            results["teacher"]["shared_seconds"] = teacher_seconds
        if fold_weights is not None:
            results["fold_weights"] = str(fold_weights)
        if transform_report:
            results["input_transform"] = transform_report
        total = store.finish(results["wall_seconds"])  # every invocation's time, stopped ones included
        if total is not None:
            results["wall_seconds_total"] = total
        if out is not None:
            wider = store.wider(seeds, subjects)
            if wider:
                warnings.warn(
                    f"{out} holds finished folds beyond this run's eval.folds/eval.seeds (--folds/--seeds) "
                    f"({wider}); its results.json, "
                    f"predictions.csv, MEGC logs and config.yaml are left as they are (they cover the whole run). Run "
                    f"the whole set again to rewrite them; these results are printed only.", stacklevel=2)
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
        store.close()


__all__ = [
    "AUTO_FOLD_BATCH", "evaluation_of", "fold_file", "fold_seed", "fold_split", "format_summary", "make_config",
    "member_seeds", "model_probs_of", "part_table", "plan_groups", "resolve_config", "resolve_fold_batch", "run_fold",
    "run_fold_group", "run_loso", "select_sources", "select_subjects",
]

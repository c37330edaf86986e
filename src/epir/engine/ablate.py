"""Ablation: the same honest LOSO (same folds, same seeds) for a model and for each of its components
switched off, in one table (markdown and CSV) in the run directory.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from epir.config import RunConfig, apply_overrides, check_ranges, repeated
from epir.data import FlowDataset, load_dataset
from epir.engine.evaluate import differences
from epir.engine.loso import check_before_training, run_loso
from epir.engine.report_html import write_table_report
from epir.engine.runstore import write_json_atomic
from epir.engine.tables import differences_markdown, run_row, to_markdown
from epir.errors import ConfigError, EpirError, did_you_mean
from epir.fileio import writable_dir
from epir.models import MODELS, resolve_model_args
from epir.runsetup import resolve_config


def model_switches(name: str) -> list[str]:
    """A model's component switches: its registered ``switches`` (``()`` for none), else its boolean arguments
    defaulting to True.
    """
    registered = MODELS.meta(name).get("switches")
    if registered is not None:
        return list(registered)
    sig = inspect.signature(MODELS.get(name))
    return [p.name for p in sig.parameters.values() if p.default is True]


#: Recipe levers (issue 13), each a set of overrides on top of the full configuration: an arm ``+<lever>``.
LEVERS: dict[str, tuple[str, ...]] = {
    "mixup": ("train.mixup=0.4",),
    "cutmix": ("train.cutmix=1.0",),
    "tta": ("train.tta=flip",),
    "soft-select": ("model.select_ratio=1.0",),
    "recentre": ("train.input_norm=recentre",),
    "wide": ("model.dim=64", "model.heads=4"),
    "ema": ("train.average=ema",),
    "swa": ("train.average=swa",),
    "rotate": ("train.rotate=10", "train.scale=0.1"),
    "ensemble": ("train.ensemble=3",),
    "snapshots": ("train.snapshots=4",),
    # soft-target distillation (weight 0.5, EPIR alone's own setting, spelled out so that the lever distils on the
    # default recipe too, whose teacher is only mixed in; soft targets need the fold's own teacher, so the default's
    # group teachers become per-fold ones)
    "distill": ("train.distill=ststnet", "train.distill_overrides=[train.epochs=80, train.lr=5e-4]",
                "train.distill_weight=0.5", "train.distill_shared=false", "train.distill_groups=0"),
    # STSTNet not distilled from but averaged with EPIR in the fold's probabilities (half each); its teacher is
    # round 5's, 20 epochs at lr 2e-3 (EPIR_TEACHER_MIX_RECIPE's; round 4 measured it with the distill lever's)
    "teacher-mix": ("train.distill=ststnet", "train.distill_overrides=[train.epochs=20, train.lr=2e-3]",
                    "train.distill_weight=0", "train.distill_mix=0.5"),
    # the teacher's weight chosen inside the fold (0 = EPIR alone to 1 = the teacher alone) on 6 subject groups
    # shared by the folds, instead of fixed at 0.5 (EPIR_TEACHER_MIX_SHARED_RECIPE, round 6's default)
    "mix-select": ("train.distill=ststnet", "train.distill_overrides=[train.epochs=20, train.lr=2e-3]",
                   "train.distill_weight=0", "train.distill_mix=0.5",
                   "train.select=[train.distill_mix=0, train.distill_mix=0.25, train.distill_mix=0.5, "
                   "train.distill_mix=0.75, train.distill_mix=1]", "train.select_shared=6"),
    # the fold's teacher as 3 seeds of its recipe, their probabilities averaged, instead of one (round 7)
    "teacher-ensemble": ("train.distill_members=3",),
    # the fold's teacher trained once per shared group, without that group, and shared by its folds (round 7)
    "teacher-grouped": ("train.distill_shared=true",),
    # the group teachers trained without groups of their own, 17 of them (4 subjects each on the composite set), not
    # the 6 the weight is chosen on: each teacher sees all but 1/17 of the subjects instead of 5/6 (round 34)
    "teacher-groups": ("train.distill_shared=true", "train.distill_groups=17"),
    # the in-fold choice by the inner log-loss of the blend instead of the mean of inner UF1 and UAR (round 6)
    "select-nll": ("train.select_metric=nll",),
    # the in-fold choice keeps the recipe's own configuration (the teacher mix: weight 0.5) unless another candidate's
    # inner score beats it by more than 0.02, round 4's "several hundredths" of inner noise (round 8)
    "select-margin": ("train.select_margin=0.02",),
    # the in-fold choice among the weights 0, 0.5 and 1 only, instead of 0 to 1 in steps of 0.25 (round 8)
    # (with mix-select's teacher and groups, so that on EPIR alone the arm is the coarse choice of the teacher mix)
    "mix-coarse": ("train.distill=ststnet", "train.distill_overrides=[train.epochs=20, train.lr=2e-3]",
                   "train.distill_weight=0", "train.distill_mix=0.5",
                   "train.select=[train.distill_mix=0, train.distill_mix=0.5, train.distill_mix=1]",
                   "train.select_shared=6"),
    "conv-stem": ("model.stem=conv", "model.patch_size=2"),
    "select-before-last": ("model.select_ratio=0.5", "model.select_before_last=true"),
    "select-epochs": ("train.select=['', 'train.epochs=20', 'train.epochs=80']",),
    # weights of `epir pretrain --subjects 200 --clips 50 --epochs 10 --out pretrained/epir-synthetic-10k` (run
    # it first; a missing file is an error before anything trains)
    "pretrain": ("train.init=pretrained/epir-synthetic-10k.safetensors",),
    # a smoother flow: every map blurred (Gaussian, sigma 1 px) and min-max normalised again, before anything else
    # (round 16: round 15's smooth stand-in for another flow pipeline, as a switch; in no recipe)
    "smooth": ("data.input_transform=smooth",),
    # class-balanced cross-entropy (weights inverse to the training fold's class counts): in EPIR's recipe since
    # round 1's search (v1-v5); the default's minus arm trains EPIR on plain cross-entropy (round 17)
    "balanced": ("train.class_weight=balanced",),
    # the balanced weights' square root, (n / (K n_c)) ** 0.5: halfway, in the exponent, between plain cross-entropy
    # and the inverse class frequency (round 18; in no recipe)
    "balanced-sqrt": ("train.class_weight=balanced", "train.class_weight_power=0.5"),
    # the training rows unshuffled and sorted by class every epoch, as the official STSTNet code reads its class
    # folders (round 20; STSTNet's recipe already does not shuffle, so there only the order changes; in no recipe)
    "official-order": ("train.shuffle=false", "train.order=by-class"),
    # DeiT's distillation token (round 23; in no recipe): a second token and head taught by the fold's own STSTNet
    # (the teacher-mix recipes' teacher, 20 epochs at lr 2e-3) through its predicted class (DeiT's hard distillation)
    # at weight 0.5, the class head by the labels; the prediction averages the two heads' logits
    "distill-token": ("model.distill_token=true", "train.distill=ststnet",
                      "train.distill_overrides=[train.epochs=20, train.lr=2e-3]", "train.distill_weight=0.5",
                      "train.distill_target=hard", "train.distill_shared=false", "train.distill_groups=0"),
    # ToMe's own matching metric (round 24; in no recipe): the token integration compares the attention keys of the
    # last block before each merge, averaged over heads, instead of the token features
    "merge-keys": ("model.merge_metric=keys",),
    # DNSPT's refinement as a learned affine map per shifted copy (grid_sample), not a 3x3 kernel per copy and
    # channel (round 25; in no recipe)
    "refine-affine": ("model.refine_transform=affine",),
    # DNSPT's copies from both shift sets, the four diagonal and the four axial ones (round 26; in no recipe)
    "shifts-both": ("model.shifts=both",),
    # DNSPT's copies shifted by one pixel, each pixel's nearest neighbours, instead of half a patch (round 26; in no
    # recipe)
    "shift-1": ("model.shift_size=1",),
    # DNSPT without shifted copies: the input's patches alone through its dual-norm projection (round 27; in no recipe)
    "shifts-none": ("model.shifts=none",),
    # each token's window reaches 3 pixels past its patch on every side, 13 x 13 overlapping windows at patch 7
    # (round 27; in no recipe)
    "overlap-3": ("model.patch_overlap=3",),
    # a fourth input channel, each pixel's flow speed from u and v recentred on the map's median, computed inside
    # the model (round 29; in no recipe)
    "flow-magnitude": ("model.flow_magnitude=true",),
    # an in-fold ensemble whose two members differ in input: the recipe's own maps and the maps recentred on their
    # median (round 29's blend of two runs, now inside each fold with the member's own seed; round 30; in no recipe)
    "input-ensemble": ("train.ensemble=2", "train.member_overrides=['', 'train.input_norm=recentre']"),
    # the same pair with a second member that differs in model as well as input: EPIR with a 13 x 13 window and no
    # shifted copies (round 27's shifts-none with overlap-3) on recentred maps (round 32; in no recipe)
    "window-member": (
        "train.ensemble=2",
        "train.member_overrides=['', 'model.shifts=none;model.patch_overlap=3;train.input_norm=recentre']",
    ),
    # the in-fold choice on the inner groups dealt twice, every deal's inner predictions pooled: a less noisy inner
    # estimate at twice the inner cost (round 33; in no recipe)
    "select-repeats": ("train.select_repeats=2",),
    # window-member with the in-fold choice (the default's teacher weight) scoring the pair it predicts with: each
    # inner model trains both members, not member 0's recipe alone (round 33; in no recipe)
    "window-member-select": (
        "train.ensemble=2",
        "train.member_overrides=['', 'model.shifts=none;model.patch_overlap=3;train.input_norm=recentre']",
        "train.select_members=true",
    ),
}


#: What each lever of :data:`LEVERS` does, in one line (``epir list levers``; docs/epir-design.md has each one's
#: rows, from "Round 2" on).
LEVER_NOTES: dict[str, str] = {
    "mixup": "mixup of maps and labels, Beta(0.4, 0.4)",
    "cutmix": "CutMix: a box pasted from another map, labels mixed by area, Beta(1, 1)",
    "tta": "test-time flip: the mean of the map's and its mirror's probabilities",
    "soft-select": "EPIR's DTSM keeps every final token, weighted by its score (select_ratio 1.0), not the top half",
    "recentre": "each map's zero motion moved to its own median before standardising",
    "wide": "EPIR wider: dim 64 and 4 heads instead of 48 and 3",
    "ema": "the fold's model is the exponential moving average of its weights",
    "swa": "the fold's model is the average of its epoch-end weights over the second half",
    "rotate": "small rotations (10 degrees) and scalings (10%) that turn and scale the (u, v) vectors too",
    "ensemble": "3 members per fold (own seeds), their probabilities averaged",
    "snapshots": "the final weights and 3 earlier epoch ends, their probabilities averaged",
    "distill": "soft targets from the fold's STSTNet (80 epochs), weight 0.5",
    "teacher-mix": "the fold's STSTNet (20 epochs) averaged with the model in the predictions, half each",
    "mix-select": "the teacher's weight in the predictions chosen inside the fold among 0 to 1 on 6 shared groups",
    "teacher-ensemble": "the fold's teacher as 3 seeds, their probabilities averaged",
    "teacher-grouped": "the teacher trained once per shared group, without that group, shared by its folds",
    "teacher-groups": "the group teachers trained without 17 groups of their own (all but 1/17 of the subjects)",
    "select-nll": "the in-fold choice by the inner log-loss instead of the mean of inner UF1 and UAR",
    "select-margin": "the in-fold choice keeps the recipe's own weight unless another beats it by 0.02",
    "mix-coarse": "the teacher's weight chosen among 0, 0.5 and 1 only",
    "conv-stem": "EPIR's tokens from a 3x3 conv + max-pool stem, patch 2 on its grid",
    "select-before-last": "DTSM selects half the tokens before the last stage (EViT-style)",
    "select-epochs": "the number of epochs chosen inside the fold: the recipe's own, 20 or 80",
    "pretrain": "start from weights of `epir pretrain` on 10,000 synthetic clips (run it first)",
    "smooth": "every map blurred (Gaussian, sigma 1 px) and min-max normalised again",
    "balanced": "class-balanced cross-entropy: weights inverse to the training fold's class counts",
    "balanced-sqrt": "the balanced weights' square root: (n / (K n_c)) ** 0.5",
    "official-order": "the training rows unshuffled and sorted by class every epoch (the official STSTNet code's)",
    "distill-token": "DeiT's distillation token: a second head taught the fold's STSTNet's class, the heads averaged",
    "merge-keys": "EPIR's token integration matches tokens by their attention keys (ToMe's choice), not features",
    "refine-affine": "DNSPT refines each shifted copy by a learned affine map (6 parameters), not 3x3 kernels",
    "shifts-both": "DNSPT makes 8 shifted copies, the diagonal and the axial ones, not SPT's 4 diagonal ones",
    "shift-1": "DNSPT shifts its copies by 1 pixel instead of half a patch (3 pixels at patch 7)",
    "shifts-none": "DNSPT makes no shifted copies: the input's patches alone, both norms kept",
    "overlap-3": "each token sees a 13 x 13 window, its patch and 3 pixels around it, not the 7 x 7 patch",
    "flow-magnitude": "EPIR reads a fourth channel, each pixel's speed from u and v taken from the map's median",
    "input-ensemble": "2 members per fold, on the recipe's maps and on maps recentred on their median, averaged",
    "window-member": "as input-ensemble, the recentred member an EPIR with a 13 x 13 window instead of shifted copies",
    "select-repeats": "the in-fold choice on the inner groups dealt twice, both deals' inner predictions pooled",
    "window-member-select": "as window-member, the in-fold choice's inner models the pair, not member 0 alone",
}


#: How to turn a lever off again, for a full configuration that already has it on (e.g. the default recipe):
#: the arm is then ``-<lever>``, the full configuration with these overrides.
LEVER_OFF: dict[str, tuple[str, ...]] = {
    "mixup": ("train.mixup=0",),
    "cutmix": ("train.cutmix=0",),
    "tta": ("train.tta=none",),
    "soft-select": ("model.select_ratio=0.5",),
    "recentre": ("train.input_norm=standardize",),
    "wide": ("model.dim=48", "model.heads=3"),
    "ema": ("train.average=none",),
    "swa": ("train.average=none",),
    "ensemble": ("train.ensemble=1", "train.member_overrides=[]"),
    "input-ensemble": ("train.ensemble=1", "train.member_overrides=[]"),
    "window-member": ("train.ensemble=1", "train.member_overrides=[]"),
    "select-repeats": ("train.select_repeats=1",),
    "window-member-select": ("train.ensemble=1", "train.member_overrides=[]", "train.select_members=false"),
    "snapshots": ("train.snapshots=1",),
    # the default recipe's teacher taken away (EPIR alone, as --recipe alone), or its weight fixed at 0.5 again (with
    # the fold's own teacher: groups are for choosing), its ensemble of 3 or its groups undone
    "teacher-mix": ("train.distill=''", "train.distill_overrides=[]", "train.distill_weight=0.5", "train.distill_mix=0",
                    "train.distill_members=1", "train.distill_shared=false", "train.distill_groups=0",
                    "train.select=[]", "train.select_shared=0"),
    "teacher-ensemble": ("train.distill_members=1",),
    "teacher-grouped": ("train.distill_shared=false", "train.distill_groups=0"),
    "teacher-groups": ("train.distill_groups=0",),
    "mix-select": ("train.select=[]", "train.select_shared=0", "train.distill_shared=false", "train.distill_groups=0"),
    "select-nll": ("train.select_metric=megc",),
    "select-margin": ("train.select_margin=0",),
    "mix-coarse": ("train.select=[train.distill_mix=0, train.distill_mix=0.25, train.distill_mix=0.5, "
                   "train.distill_mix=0.75, train.distill_mix=1]",),
    "smooth": ("data.input_transform=none",),
    "balanced": ("train.class_weight=none", "train.class_weight_power=1"),
    "balanced-sqrt": ("train.class_weight_power=1",),
    "official-order": ("train.order=rows",),
}


def lever_on(cfg: RunConfig, lever: str) -> RunConfig | None:
    """``cfg`` with ``lever``'s overrides (:data:`LEVERS`), or None when they change nothing (it is already on)."""
    if lever not in LEVERS:
        raise ConfigError(f"no lever {lever!r}{did_you_mean(lever, LEVERS)}; levers: {', '.join(LEVERS)}, all.")
    on = apply_overrides(cfg, list(LEVERS[lever]))
    return None if resolve_config(on) == resolve_config(cfg) else on


def lever_arm(cfg: RunConfig, lever: str) -> tuple[str, RunConfig]:
    """The ablation arm of ``lever`` on ``cfg``: ``+<lever>`` (the lever's overrides), or ``-<lever>`` (turned
    off by :data:`LEVER_OFF`) when ``cfg`` already has it on.
    """
    on = lever_on(cfg, lever)
    if on is not None:
        return f"+{lever}", on
    if lever not in LEVER_OFF:
        raise ConfigError(f"lever {lever!r} is already on in the full configuration and has no 'off' setting; "
                          "ablate it from a configuration without it.")
    return f"-{lever}", apply_overrides(cfg, list(LEVER_OFF[lever]))


def describe_levers(cfg: RunConfig) -> list[tuple[str, str | None, str, tuple[str, ...]]]:
    """Each lever of :data:`LEVERS` on ``cfg`` (``epir list levers``): its name, the arm it makes (:func:`lever_arm`;
    None where it does not apply to the model, e.g. an EPIR argument on STSTNet), what it does
    (:data:`LEVER_NOTES`) and the settings that arm changes (the lever's, or :data:`LEVER_OFF`'s for a ``-`` arm;
    the lever's where it does not apply).
    """
    out = []
    for lever, overrides in LEVERS.items():
        try:
            arm: str | None = lever_arm(cfg, lever)[0]
        except EpirError:
            arm = None
        shown = LEVER_OFF[lever] if arm is not None and arm.startswith("-") else overrides
        out.append((lever, arm, LEVER_NOTES[lever], shown))
    return out


def run_ablation(
    cfg: RunConfig,
    out_dir: str | os.PathLike,
    *,
    dataset: FlowDataset | None = None,
    switches: list[str] | None = None,
    levers: list[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """LOSO of the full model and of each switch turned off; writes ``ablation.md`` and ``ablation.csv``, and
    ``differences.json``: each arm minus the full model on the same samples (paired subject bootstrap).

    Args:
        cfg: the full model's run config (its seeds and folds are used by every arm).
        out_dir: the run directory; each arm's own run directory is ``out_dir/<arm>`` (resumable).
        dataset: the data (loaded from ``cfg.data`` when omitted, once for all arms).
        switches: the components to switch off (default: all the model's switches; ``[]``: none, the levers alone).
        levers: recipe levers of :data:`LEVERS`, one arm each (``["all"]``: every one): ``+<lever>`` adds it,
            ``-<lever>`` takes it away when the full configuration already has it (:func:`lever_arm`).
        progress: print each arm and show the progress bars.
    """
    out = Path(out_dir)
    known = model_switches(cfg.model.name)
    switches = known if switches is None else switches
    for what, names in (("switches (--switches)", switches), ("levers (--levers)", levers or [])):
        twice = repeated(names)
        if twice:
            raise ConfigError(f"{what} names {twice[0]!r} more than once; name each once (one arm each).")
    for s in switches:
        if s not in known:
            raise ConfigError(f"{cfg.model.name!r} has no switch {s!r}; its switches: {', '.join(known) or 'none'}.")
    if not switches and not levers:
        raise ConfigError(f"{cfg.model.name!r} has no component switches to ablate; ablate recipe levers "
                          f"instead (levers, --levers: e.g. --levers tta mixup; all: {', '.join(LEVERS)}), or "
                          "another model (epir: --model epir).")
    if dataset is None:
        dataset = load_dataset(cfg.data.dataset, root=cfg.data.root, seed=cfg.data.seed)
    full_args = resolve_model_args(cfg.model.name, cfg.model.args)
    arms = [("full", cfg)]
    for s in switches:
        if not full_args.get(s, True):
            raise ConfigError(f"model.{s} is already false in the full configuration; nothing to ablate.")
        arms.append((f"no-{s}", replace(cfg, model=replace(cfg.model, args={**cfg.model.args, s: False}))))
    for lever in (list(LEVERS) if levers == ["all"] else levers or []):
        arms.append(lever_arm(cfg, lever))
    for arm, arm_cfg in arms:  # every arm's errors (a bad value, a missing train.init) before any arm trains
        try:
            check_ranges(resolve_config(arm_cfg))
            check_before_training(resolve_config(arm_cfg))
        except ConfigError as e:
            raise ConfigError(f"ablation arm {arm}: {e}") from None
    writable_dir(out, "ablation folder")
    rows = []
    for arm, arm_cfg in arms:
        if progress:
            print(f"[ablate] {arm}")
        results = run_loso(arm_cfg, dataset=dataset, out_dir=out / arm, progress=progress)
        rows.append(run_row(arm, results, arm_cfg))
    table = pd.DataFrame(rows).rename(columns={"name": "arm"})
    table.to_csv(out / "ablation.csv", index=False)
    diffs = differences({arm: out / arm for arm, _ in arms}, "full")
    write_json_atomic(out / "differences.json", diffs)
    (out / "ablation.md").write_text(
        f"# Ablation of {cfg.model.name} on {dataset.name} ({rows[0]['protocol']}, {rows[0]['evaluation']}, seeds "
        f"{list(cfg.eval.seeds)}, {rows[0]['n_folds']} folds)\n\n"
        + to_markdown(table, "arm") + ("\n" + differences_markdown(diffs) if diffs else "")
    )
    write_table_report(out, f"Ablation of {cfg.model.name} on {dataset.name}", to_markdown(table, "arm"),
                       runs=[arm for arm, _ in arms])
    return table

"""The choice inside the fold on repeated deals of the inner groups (``train.select_repeats``, issue 13 item 1,
round 33): the first deal is the one-deal choice's, every deal keeps the held-out subject out, and the candidates are
scored on every deal's inner predictions pooled."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, apply_overrides, check_ranges
from epir.engine import selection
from epir.engine.loso import run_loso
from epir.engine.selection import candidate_configs, member_configs, select_in_fold, select_shared, shared_groups
from epir.errors import ConfigError
from epir.models import default_recipe
from fakes import shared_choices_in_workers, spy_on_selection_training


def repeats_cfg(repeats: int = 2, shared: int = 3, **eval_kw) -> RunConfig:
    """STSTNet for 1 epoch choosing its learning rate inside the fold, the inner groups dealt ``repeats`` times."""
    eval_kw.setdefault("threads", 1)
    recipe = replace(default_recipe("ststnet"), epochs=1, select=("", "train.lr=0.01"), select_shared=shared,
                     select_k=2, select_repeats=repeats)
    return RunConfig(model=ModelConfig(name="ststnet"), data=DataConfig(dataset="megc2019"), train=recipe,
                     eval=EvalConfig(**eval_kw))


def inner_jobs(monkeypatch) -> list[list[tuple[tuple[int, ...], int]]]:
    """Record each call's inner models as (training rows, seed)."""
    calls: list[list[tuple[tuple[int, ...], int]]] = []
    real = selection._inner_predictions

    def spy(dataset, cand, inner, held, **kw):
        calls.append([(tuple(int(i) for i in rows), seed) for rows, seed, _ in inner])
        return real(dataset, cand, inner, held, **kw)

    monkeypatch.setattr(selection, "_inner_predictions", spy)
    return calls


@pytest.mark.parametrize("shared", [3, 0])
def test_the_first_deal_is_the_one_deal_choices(fake_dataset, monkeypatch, shared: int) -> None:
    """Two deals train the one-deal inner models first, then as many others (other groups, other seeds)."""
    calls = inner_jobs(monkeypatch)
    subject = fake_dataset.subject_list()[0]
    train_idx = np.flatnonzero(np.asarray(fake_dataset.subjects) != subject)
    for repeats in (1, 2):
        cfg = repeats_cfg(repeats, shared)
        if shared:
            select_shared(fake_dataset, cfg, 0, [subject])
        else:
            select_in_fold(fake_dataset, cfg, train_idx, 123)
    one, two = calls[:2], calls[2:]  # per call: one candidate's inner models (the two candidates train differently)
    for a, b in zip(one, two):
        assert b[:len(a)] == a and len(b) == 2 * len(a)
        assert not set(b[len(a):]) & set(a)


def test_no_deal_lets_the_held_out_subject_in_nor_change_its_choice(fake_dataset, monkeypatch) -> None:
    """Spy on every inner training: none holds a row of the held-out subject; replacing its maps and labels leaves
    its fold's inner scores exactly as they were."""
    trained = spy_on_selection_training(monkeypatch)
    cfg = repeats_cfg(2)
    subject = fake_dataset.subject_list()[2]
    rows = torch.tensor([s == subject for s in fake_dataset.subjects])
    a = select_shared(fake_dataset, cfg, 0, [subject])[subject]
    assert trained, "selection trained nothing"
    for x in trained:
        for row in fake_dataset.x[rows]:
            assert not (x == row).flatten(1).all(1).any(), "a row of the held-out subject reached selection"
    x, y = fake_dataset.x.clone(), fake_dataset.y.clone()
    x[rows] = torch.rand_like(x[rows]) * 255
    y[rows] = (y[rows] + 1) % len(fake_dataset.class_names)
    b = select_shared(replace(fake_dataset, x=x, y=y), cfg, 0, [subject])[subject]
    assert a == b
    groups = [next(j for j, g in enumerate(shared_groups(fake_dataset.subjects, 3, 0, r)) if subject in g)
              for r in range(2)]
    assert a[1]["select_repeats"] == 2 and a[1]["groups"] == groups and a[1]["group"] == groups[0]


def test_the_choice_pools_every_deal(fake_dataset, monkeypatch) -> None:
    """Each candidate is scored once, on the rows of every group but the held-out subject's, in every deal pooled."""
    pooled: list[int] = []
    real = selection.megc_scores

    def count(true, pred, *a, **kw):
        pooled.append(len(true))
        return real(true, pred, *a, **kw)

    monkeypatch.setattr(selection, "megc_scores", count)
    subject = fake_dataset.subject_list()[0]
    select_shared(fake_dataset, repeats_cfg(2), 0, [subject])
    outside = 0
    for r in range(2):
        mates = next(g for g in shared_groups(fake_dataset.subjects, 3, 0, r) if subject in g)
        outside += sum(s not in mates for s in fake_dataset.subjects)
    assert pooled == [outside, outside]  # one scoring per candidate


def test_a_run_records_its_deals(fake_dataset, tmp_path) -> None:
    subject = fake_dataset.subject_list()[1]
    out = tmp_path / "run"
    run_loso(repeats_cfg(2, folds=(subject,), fold_batch=1, report=False), fake_dataset, out, progress=False)
    rec = json.loads(next((out / "folds").rglob("*.json")).read_text())["selection"]
    results = json.loads((out / "results.json").read_text())["selection"]
    assert rec["select_repeats"] == 2 and len(rec["groups"]) == 2 and results["select_repeats"] == 2


def test_the_deals_in_worker_processes_are_one_process(fake_dataset, one_torch_thread) -> None:
    one = shared_choices_in_workers(fake_dataset, repeats_cfg(2))
    assert all(choice["select_repeats"] == 2 for _, choice in one.values())


@pytest.mark.parametrize("change, message", [
    ({"select_repeats": 0}, r"train.select_repeats.*from 1 to 10"),
    ({"select_repeats": 11}, r"train.select_repeats.*from 1 to 10"),
    ({"select": (), "select_shared": 0}, r"train.select_repeats.*1 without a choice"),
])
def test_repeats_range(change: dict, message: str) -> None:
    cfg = repeats_cfg(2)
    check_ranges(cfg)
    with pytest.raises(ConfigError, match=message):
        check_ranges(replace(cfg, train=replace(cfg.train, **change)))


def test_neither_a_candidate_nor_a_member_sets_it() -> None:
    with pytest.raises(ConfigError, match="cannot vary inside the fold"):
        candidate_configs(apply_overrides(repeats_cfg(2), ["train.select=['', 'train.select_repeats=1']"]))
    members = apply_overrides(repeats_cfg(2), ["train.ensemble=2",
                                               "train.member_overrides=['', 'train.select_repeats=1']"])
    with pytest.raises(ConfigError, match="is not one member's to set"):
        member_configs(members)
    assert all(c.train.select_repeats == 1 for c in candidate_configs(repeats_cfg(2)))


def test_group_teachers_keep_the_first_deal() -> None:
    """The first deal is the groups the group teachers train without; other deals differ."""
    subjects = [f"s{i}" for i in range(12)]
    assert shared_groups(subjects, 3, 5) == shared_groups(subjects, 3, 5, 0)
    assert shared_groups(subjects, 3, 5, 1) != shared_groups(subjects, 3, 5, 0)

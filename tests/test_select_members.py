"""The choice inside the fold scored on the whole in-fold ensemble (``train.select_members``, issue 13 item 1,
round 33): each inner model is every member of the fold's ensemble, their probabilities averaged, so that the choice
scores what the fold predicts with; the held-out subject's group still takes no part."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, apply_overrides, check_ranges
from epir.engine import selection
from epir.engine.ablate import lever_arm
from epir.engine.loso import run_loso
from epir.engine.selection import candidate_configs, member_configs, member_seeds, select_shared, shared_seed
from epir.errors import ConfigError
from epir.models import default_recipe
from epir.runsetup import make_config, resolve_config
from fakes import shared_choices_in_workers, spy_on_selection_training


def pair_cfg(select_members: bool = True, members: tuple[str, ...] = ("", "train.epochs=2"), **eval_kw) -> RunConfig:
    """STSTNet for 1 epoch, an in-fold pair whose member 1 trains 2 epochs, a choice of learning rate on 3 shared
    groups."""
    eval_kw.setdefault("threads", 1)
    recipe = replace(default_recipe("ststnet"), epochs=1, ensemble=2, member_overrides=members,
                     select=("", "train.lr=0.01"), select_shared=3, select_members=select_members)
    return RunConfig(model=ModelConfig(name="ststnet"), data=DataConfig(dataset="megc2019"), train=recipe,
                     eval=EvalConfig(**eval_kw))


def test_an_inner_model_is_the_mean_of_the_members(fake_dataset) -> None:
    """With members, each inner prediction is the mean of member 0's (the inner model trained without members) and
    member 1's, trained from the inner seed's second member seed with member 1's own recipe."""
    cfg = pair_cfg()
    cand = candidate_configs(cfg)[0]
    subjects = np.asarray(fake_dataset.subjects)
    names = fake_dataset.subject_list()
    inner = [(np.flatnonzero(subjects != s), 11 + j, f"inner {j}") for j, s in enumerate(names[:2])]
    held = [np.flatnonzero(subjects == s) for s in names[:2]]
    pair, teacher = selection._inner_predictions(fake_dataset, cand, inner, held, batched=False, members=True)
    alone, _ = selection._inner_predictions(fake_dataset, cand, inner, held, batched=False)
    second = member_configs(cand)[1]
    assert second.train.epochs == 2
    inner_1 = [(idx, member_seeds(seed, 2)[1], name) for idx, seed, name in inner]
    other, _ = selection._inner_predictions(fake_dataset, second, inner_1, held, batched=False)
    assert teacher is None and len(pair) == 2
    for p, a, b in zip(pair, alone, other):
        torch.testing.assert_close(p, (a + b) / 2, atol=1e-6, rtol=0)
        assert not torch.allclose(a, b)  # the members differ, so the mean is not member 0's


def test_the_pair_choice_never_sees_the_held_out_group_and_is_recorded(fake_dataset, monkeypatch, tmp_path) -> None:
    """Spy on every training of the choice: twice the inner models of member 0 alone, none with a row of the held-out
    subject's group; the fold file and results.json say that the inner models were the pair."""
    subject = fake_dataset.subject_list()[1]
    groups = selection._deal(list(fake_dataset.subjects), 3, shared_seed(0), "test")
    mates = next(g for g in groups if subject in g)
    outside = fake_dataset.x[torch.tensor([s in mates for s in fake_dataset.subjects])]
    counts = {}
    for members in (False, True):
        trained = spy_on_selection_training(monkeypatch)
        out = tmp_path / f"members-{members}"
        run_loso(pair_cfg(members, folds=(subject,), fold_batch=1, report=False), fake_dataset, out, progress=False)
        counts[members] = len(trained)
        for x in trained:  # selection's trainings (the fold's own members train in epir.engine.folds)
            for row in outside:
                assert not (x == row).flatten(1).all(1).any(), "a row of the held-out subject's group reached selection"
        rec = json.loads(next((out / "folds").rglob("*.json")).read_text())["selection"]
        results = json.loads((out / "results.json").read_text())["selection"]
        assert results["select_members"] is members
        assert rec.get("select_members") == (2 if members else None)
    assert counts[False] == 2 * 2  # 2 candidates that train differently x the 2 pairs of the fold's group
    assert counts[True] == 2 * counts[False]


def test_the_pair_choice_in_worker_processes_is_one_process(fake_dataset, one_torch_thread) -> None:
    """select_shared(jobs=2) with members deals the inner pairs to two processes: the same scores and choices."""
    one = shared_choices_in_workers(fake_dataset, pair_cfg())
    alone = select_shared(fake_dataset, pair_cfg(False), 0, fake_dataset.subject_list())
    assert all(choice["select_members"] == 2 for _, choice in one.values())
    assert any(one[s][1]["scores"] != alone[s][1]["scores"] for s in one)  # the pair is scored, not member 0


@pytest.mark.parametrize("change, message", [
    ({"ensemble": 1, "member_overrides": ()}, r"train.select_members.*needs train.ensemble > 1"),
    ({"select": (), "select_shared": 0}, r"train.select_members.*train.select candidates"),
])
def test_members_need_an_ensemble_and_a_choice(change: dict, message: str) -> None:
    cfg = pair_cfg()
    check_ranges(cfg)
    with pytest.raises(ConfigError, match=message):
        check_ranges(replace(cfg, train=replace(cfg.train, **change)))


def test_neither_a_candidate_nor_a_member_sets_it() -> None:
    """It belongs to the fold's choice: a candidate may not vary it, nor may one member set it."""
    with pytest.raises(ConfigError, match="cannot vary inside the fold"):
        candidate_configs(apply_overrides(pair_cfg(), ["train.select=['', 'train.select_members=false']"]))
    with pytest.raises(ConfigError, match="is not one member's to set"):
        member_configs(apply_overrides(pair_cfg(), ["train.member_overrides=['', 'train.select_members=false']"]))
    # the candidates and members themselves are the configurations without a choice
    assert not any(c.train.select_members for c in candidate_configs(pair_cfg()))


def test_the_lever_on_the_default() -> None:
    """Lever window-member-select: the default's pair with a window member, its choice scored on the pair; and off."""
    cfg = make_config("epir", "megc2019")
    arm, on = lever_arm(cfg, "window-member-select")
    on = resolve_config(on)
    check_ranges(on)
    assert arm == "+window-member-select" and on.train.select_members and on.train.ensemble == 2
    assert "model.patch_overlap=3" in on.train.member_overrides[1]
    arm, off = lever_arm(on, "window-member-select")
    off = resolve_config(off)
    check_ranges(off)
    assert arm == "-window-member-select" and not off.train.select_members and off.train.ensemble == 1

"""An in-fold ensemble whose members train differently (``train.member_overrides``, issue 13 item 2, round 30)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, apply_overrides, check_ranges
from epir.engine import folds, selection
from epir.engine.ablate import LEVERS
from epir.engine.loso import check_before_training, run_loso
from epir.engine.selection import candidate_configs, member_configs
from epir.errors import ConfigError
from epir.models import default_recipe
from fakes import record_returns

RECENTRE = ("", "train.input_norm=recentre;train.hflip=0")


def run_cfg(members: tuple[str, ...] = RECENTRE, **eval_kw) -> RunConfig:
    """STSTNet for 2 epochs, standardised maps, two members: the recipe's own and recentred maps without flips."""
    eval_kw.setdefault("threads", 1)
    train = replace(default_recipe("ststnet"), epochs=2, input_norm="standardize", hflip=0.5,
                    ensemble=len(members) or 1, member_overrides=members)
    return RunConfig(model=ModelConfig(name="ststnet"), data=DataConfig(dataset="megc2019"), train=train,
                     eval=EvalConfig(**eval_kw))


def test_each_member_trains_with_its_own_recipe_and_the_fold_averages_them(fake_dataset, monkeypatch) -> None:
    """Member 0 trains the run's recipe (it is the plain fold's model), member 1 its overrides; the fold's
    probabilities are the mean of the members'."""
    recipes: list = []
    real_fit = folds.fit
    monkeypatch.setattr(folds, "fit", lambda model, x, y, recipe, **kw: (recipes.append(recipe),
                                                                          real_fit(model, x, y, recipe, **kw))[1])
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(folds, "predict_proba", record_returns(folds.predict_proba, seen))
    subject = fake_dataset.subject_list()[0]
    rec = folds.run_fold(fake_dataset, run_cfg(fold_batch=1), subject, seed=0)
    assert [(r.input_norm, r.hflip) for r in recipes] == [("standardize", 0.5), ("recentre", 0.0)]
    assert len(seen) == 2
    np.testing.assert_allclose(rec["probs"], torch.stack(seen).mean(0).numpy(), atol=1e-6)
    plain = folds.run_fold(fake_dataset, run_cfg((), fold_batch=1), subject, seed=0)
    np.testing.assert_allclose(plain["probs"], seen[0].numpy(), atol=1e-6)  # member 0 is the plain fold


def test_a_group_of_folds_trains_the_members_as_each_fold_alone_does(fake_dataset, monkeypatch) -> None:
    """run_fold_group (several folds at once, members alike trained in one call) gives each fold the probabilities
    that run_fold gives it, and hands each member its own recipe."""
    recipes: list = []
    real = selection.train_models
    monkeypatch.setattr(folds, "train_models", lambda m, recipe, jobs, **kw: (recipes.append((recipe, len(jobs))),
                                                                             real(m, recipe, jobs, **kw))[1])
    subjects = fake_dataset.subject_list()[:2]
    records = folds.run_fold_group(fake_dataset, run_cfg(fold_batch=2), [(0, s) for s in subjects])
    assert [(r.input_norm, n) for r, n in recipes] == [("standardize", 2), ("recentre", 2)]  # one call per recipe
    for s, rec in zip(subjects, records):
        alone = folds.run_fold(fake_dataset, run_cfg(fold_batch=1), s, seed=0)
        np.testing.assert_allclose(rec["probs"], alone["probs"], atol=1e-6)


def test_a_run_with_member_overrides_counts_both_members(fake_dataset, tmp_path) -> None:
    cfg = run_cfg(folds=(fake_dataset.subject_list()[0],))
    r = run_loso(cfg, fake_dataset, tmp_path / "run", progress=False)
    assert r["params_total"] == 2 * r["params"]
    assert "member_overrides" in (tmp_path / "run" / "config.yaml").read_text()


def test_without_member_overrides_every_member_is_the_run() -> None:
    cfg = run_cfg(())
    cfg = replace(cfg, train=replace(cfg.train, ensemble=3))
    assert member_configs(cfg) == [cfg, cfg, cfg]


@pytest.mark.parametrize("overrides, message", [
    (["train.ensemble=3", "train.member_overrides=['', 'train.lr=1e-3']"],
     r"train.member_overrides=\['', 'train.lr=1e-3'\]: expected one entry per member: 2 entries need "
     r"train.ensemble=2 \(it is 3\)"),
    (["train.ensemble=2", "train.member_overrides=['', 'train.tta=flip']"],
     r"member 1 \('train.tta=flip'\): 'train.tta' is not one member's to set"),
    (["train.ensemble=2", "train.member_overrides=['', 'model.dim=64']"],  # STSTNet has no width to set
     r"member 1 \('model.dim=64'\): Model 'ststnet' has no argument 'dim'"),
    (["train.ensemble=2", "train.member_overrides=['', 'model.name=epir']"],
     r"member 1 \('model.name=epir'\): 'model.name' is not one member's to set"),
    (["train.ensemble=2", "train.member_overrides=['', 'train.distill=ststnet']"],
     r"'train.distill' is not one member's to set"),
    (["train.ensemble=2", "train.member_overrides=['', 'train.input_norm=median']"],
     r"member 1 \('train.input_norm=median'\): train.input_norm='median': expected none \| scale"),
    (["train.ensemble=2", "train.member_overrides=['', 'recentre']"],
     r"train.member_overrides expects KEY=VALUE \(e.g. train.input_norm=recentre\), got 'recentre'"),
])
def test_a_malformed_member_stops_before_training(overrides: list[str], message: str) -> None:
    cfg = apply_overrides(run_cfg(()), overrides)
    with pytest.raises(ConfigError, match=message):
        check_ranges(cfg)
        check_before_training(cfg)


def test_a_candidate_may_not_change_the_members() -> None:
    cfg = apply_overrides(run_cfg(), ["train.select=['', \"train.member_overrides=['']\"]"])
    with pytest.raises(ConfigError, match="'train.member_overrides' cannot vary inside the fold"):
        candidate_configs(cfg)


def test_the_input_ensemble_lever_sets_two_members_on_plain_and_recentred_maps() -> None:
    from epir.runsetup import make_config

    cfg = make_config("epir", "megc2019", overrides=list(LEVERS["input-ensemble"]))
    check_ranges(cfg)
    norms = [m.train.input_norm for m in member_configs(cfg)]
    assert norms == [cfg.train.input_norm, "recentre"] and cfg.train.input_norm != "recentre"

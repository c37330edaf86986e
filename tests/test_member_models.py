"""Ensemble members that differ in their model's arguments (``train.member_overrides`` with ``model.*``, issue 13
item 2, round 32): each member builds and trains its own network, and the run reports parameters per member and
for the whole."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, apply_overrides, check_ranges
from epir.engine import folds
from epir.engine.cost import prediction_cost, prediction_module
from epir.engine.loso import check_before_training, run_loso
from epir.engine.results import ensemble_members, format_summary
from epir.engine.selection import member_configs
from epir.errors import ConfigError
from epir.models import build_model, default_recipe, resolve_model_args
from epir.profiling import count_parameters
from fakes import record_returns

WINDOW = ("", "model.shifts=none;model.patch_overlap=3;train.input_norm=recentre")


def epir_cfg(members: tuple[str, ...] = WINDOW, **eval_kw) -> RunConfig:
    """EPIR for 2 epochs with nothing chosen in the fold and no teacher; two members: the run's model and EPIR with
    a window instead of shifted copies, on recentred maps."""
    eval_kw.setdefault("threads", 1)
    train = replace(default_recipe("epir", "alone"), epochs=2,
                    ensemble=len(members) or 1, member_overrides=members)
    return RunConfig(model=ModelConfig(name="epir"), data=DataConfig(dataset="megc2019"), train=train,
                     eval=EvalConfig(**eval_kw))


def test_a_member_with_model_arguments_trains_its_own_network(fake_dataset, monkeypatch) -> None:
    """Member 1 is built from its own model arguments (and member 0 is still the plain fold's model); a group of
    folds trains each member's own network as each fold alone does."""
    built: list = []
    monkeypatch.setattr(folds, "build_model", record_returns(folds.build_model, built))
    subject = fake_dataset.subject_list()[0]
    rec = folds.run_fold(fake_dataset, epir_cfg(fold_batch=1), subject, seed=0)
    window = build_model(member_configs(epir_cfg())[1].model)
    assert [count_parameters(m) for m in built] == [count_parameters(build_model(ModelConfig(name="epir"))),
                                                    count_parameters(window)]
    assert count_parameters(window) != count_parameters(built[0])
    np.testing.assert_allclose(np.mean(rec["member_probs"], axis=0), rec["probs"], atol=1e-6)
    plain = folds.run_fold(fake_dataset, epir_cfg((), fold_batch=1), subject, seed=0)
    np.testing.assert_allclose(rec["member_probs"][0], plain["probs"], atol=1e-6)  # member 0 is the plain fold
    subjects = fake_dataset.subject_list()[:2]
    group = folds.run_fold_group(fake_dataset, epir_cfg(fold_batch=2), [(0, s) for s in subjects])
    for s, got in zip(subjects, group):
        alone = rec if s == subject else folds.run_fold(fake_dataset, epir_cfg(fold_batch=1), s, seed=0)
        np.testing.assert_allclose(got["member_probs"], alone["member_probs"], atol=1e-5)


def test_the_run_counts_each_members_network_and_the_whole(fake_dataset, tmp_path) -> None:
    """results.json: each member's own params and FLOPs, params_total their sum; the summary line names each
    member's size where they differ; the module timed as one prediction holds every member's network."""
    cfg = epir_cfg(folds=tuple(fake_dataset.subject_list()[:2]), report=False)
    r = run_loso(cfg, fake_dataset, tmp_path / "run", progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    plain, window = (count_parameters(build_model(m.model)) for m in member_configs(cfg))
    assert [m["params"] for m in results["members"]] == [plain, window]
    assert all(isinstance(m["flops"], int) and m["flops"] > 0 for m in results["members"])
    assert r["params"] == plain and r["params_total"] == plain + window
    assert results["flops_total"] == sum(m["flops"] for m in results["members"]) * 2  # the recipe's flip
    line = ensemble_members(results)
    assert line is not None and f"{window:,} params" in line and f"member 0 {plain:,} params" in line
    assert line in format_summary(results)
    assert count_parameters(prediction_module(cfg)) == prediction_cost(cfg, (3, 28, 28)).params_total
    assert prediction_cost(epir_cfg(("", "train.input_norm=recentre")), (3, 28, 28)).members[0] == \
        prediction_cost(epir_cfg(("", "train.input_norm=recentre")), (3, 28, 28)).members[1]
    alike = {**results, "members": [{**m, "params": plain} for m in results["members"]]}
    assert "params" not in (ensemble_members(alike) or "")  # members of one size: the line says no sizes


@pytest.mark.parametrize("member, message", [
    ("model.name=ststnet", r"member 1 \('model.name=ststnet'\): 'model.name' is not one member's to set"),
    ("model.num_classes=5", r"'model.num_classes' is not one member's to set"),
    ("model.in_channels=4", r"'model.in_channels' is not one member's to set"),
    ("model.width=2", r"member 1 \('model.width=2'\): Model 'epir' has no argument 'width'"),
    ("model.shifts=none;model.shift_size=2", r"member 1 \('model.shifts=none;model.shift_size=2'\): .*shift"),
])
def test_a_member_whose_model_cannot_be_built_stops_before_training(member: str, message: str) -> None:
    cfg = apply_overrides(epir_cfg(()), ["train.ensemble=2", f"train.member_overrides=['', '{member}']"])
    with pytest.raises(ConfigError, match=message):
        check_ranges(cfg)
        check_before_training(cfg)


def test_the_window_member_lever_pairs_the_recipes_epir_with_a_recentred_window_epir() -> None:
    from epir.engine.ablate import LEVERS
    from epir.runsetup import make_config

    cfg = make_config("epir", "megc2019", overrides=list(LEVERS["window-member"]))
    check_ranges(cfg)
    first, second = member_configs(cfg)
    assert first == cfg and second.train.input_norm == "recentre"
    assert (second.model.args["shifts"], second.model.args["patch_overlap"]) == ("none", 3)
    own = resolve_model_args("epir", cfg.model.args)  # the rest of the member's model is the recipe's
    assert {k: v for k, v in second.model.args.items() if k not in ("shifts", "patch_overlap")} == \
        {k: v for k, v in own.items() if k not in ("shifts", "patch_overlap")}

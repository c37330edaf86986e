"""`epir ablate` and `epir profile` end to end, with tiny models on tiny data."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from epir.cli import main
from epir.engine.ablate import model_switches

TINY_EPIR = ["--set", "model.dim=12", "--set", "model.heads=2", "--set", "model.projection_dim=8"]


def test_epir_switches_are_its_components():
    assert model_switches("epir") == ["dnspt", "refine", "merge", "itals", "dtsm", "contrastive"]


@pytest.mark.parametrize("model", ["ststnet", "htnet"])
def test_the_official_baselines_have_no_switches(model, tmp_path, capsys):
    """bgr_input (the input channels' order) is not a component; ablating a baseline needs recipe levers."""
    assert model_switches(model) == []
    code = main(["ablate", "--model", model, "--dataset", "synthetic", "--out", str(tmp_path / "a"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"'{model}' has no component switches to ablate" in err and "--levers" in err
    assert not (tmp_path / "a").exists()


def test_ablate_writes_one_table(fake_root, tmp_path, capsys):
    out = tmp_path / "ablate"
    code = main(["ablate", "--model", "epir", "--recipe", "alone", "--dataset", "megc2019", "--root", str(fake_root),
                 "--epochs", "1", "--switches", "merge", "itals", "--folds", "casme2/sub01", "samm/006",
                 "--threads", "1",
                 "--out", str(out), "--no-progress", *TINY_EPIR])
    assert code == 0
    table = pd.read_csv(out / "ablation.csv")
    assert list(table["arm"]) == ["full", "no-merge", "no-itals"]
    for col in ("uf1", "uf1_std", "uar", "uar_std", "params", "flops_per_sample", "fold_seconds"):
        assert col in table.columns
    md = (out / "ablation.md").read_text()
    assert "| no-merge |" in md and "±" not in md  # one seed: the value, no spread
    diffs = json.loads((out / "differences.json").read_text())  # each arm minus the full model
    assert [d["names"] for d in diffs] == [["no-merge", "full"], ["no-itals", "full"]]
    assert "| no-merge - full |" in md
    # each arm is a full run directory whose config says what was switched off
    assert "merge: false" in (out / "no-merge" / "config.yaml").read_text()
    assert "itals: true" in (out / "no-merge" / "config.yaml").read_text()
    assert "no-itals" in capsys.readouterr().out


def test_ablate_levers_add_one_arm_each(fake_root, tmp_path):
    out = tmp_path / "ablate"
    code = main(["ablate", "--model", "epir", "--recipe", "alone", "--dataset", "megc2019", "--root", str(fake_root),
                 "--epochs", "1", "--switches", "merge", "--levers", "mixup", "ensemble", "--folds", "casme2/sub01",
                 "--threads", "1",
                 "--out", str(out), "--no-progress", *TINY_EPIR])
    assert code == 0
    assert list(pd.read_csv(out / "ablation.csv")["arm"]) == ["full", "no-merge", "+mixup", "+ensemble"]
    assert "mixup: 0.4" in (out / "+mixup" / "config.yaml").read_text()
    assert "ensemble: 3" in (out / "+ensemble" / "config.yaml").read_text()
    assert main(["ablate", "--model", "epir", "--levers", "mixupp", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2


def test_ablate_switches_given_alone_runs_the_lever_arms_only(fake_root, tmp_path):
    """`--switches` with no name: no component arm, only the full configuration and the levers' arms."""
    out = tmp_path / "ablate"
    code = main(["ablate", "--model", "epir", "--recipe", "alone", "--dataset", "megc2019", "--root", str(fake_root),
                 "--epochs", "1", "--switches", "--levers", "smooth", "--folds", "casme2/sub01", "--threads", "1",
                 "--out", str(out), "--no-progress", *TINY_EPIR])
    assert code == 0
    assert list(pd.read_csv(out / "ablation.csv")["arm"]) == ["full", "+smooth"]
    assert "input_transform: smooth" in (out / "+smooth" / "config.yaml").read_text()


def test_ablate_unknown_switch(fake_root, tmp_path, capsys):
    code = main(["ablate", "--model", "epir", "--dataset", "megc2019", "--root", str(fake_root),
                 "--switches", "mergee", "--out", str(tmp_path / "a"), "--no-progress"])
    assert code == 2
    assert "no switch 'mergee'" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--switches", "dnspt", "merge", "dnspt"], ["--levers", "tta", "tta"]])
def test_ablate_an_arm_named_twice(fake_root, tmp_path, capsys, flags):
    """Each arm ran twice (the second resumed the first) and the table showed it as two rows."""
    code = main(["ablate", "--model", "epir", "--dataset", "megc2019", "--root", str(fake_root), *flags,
                 "--out", str(tmp_path / "a"), "--no-progress"])
    assert code == 2 and "more than once" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("model", ["epir", "ststnet"])
def test_profile_json(model, capsys):
    assert main(["profile", "--model", model, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == model
    assert row["params"] > 0 and row["flops_per_sample"] > 0
    assert row["latency_ms_b1"] > 0 and row["latency_ms_b64"] > 0


def test_profile_times_on_the_threads_it_is_given(capsys):
    """--threads 1 times on one torch thread (steadier under load), says so, and leaves torch's setting as it was."""
    import torch

    before = torch.get_num_threads()
    assert main(["profile", "--model", "ststnet", "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == 1 and torch.get_num_threads() == before
    assert main(["profile", "--model", "ststnet", "--threads", "1"]) == 0
    assert "(latencies on 1 torch thread)" in capsys.readouterr().out
    assert main(["profile", "--model", "ststnet", "--threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert "epir profile --threads -1: expected an integer >= 0" in err and "Traceback" not in err


def test_profile_table_with_override(capsys):
    assert main(["profile", "--model", "epir", "--set", "model.merge=false"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs/sample" in out and "epir" in out


def test_profile_of_a_recipe_counts_the_whole_prediction(capsys):
    """--recipe: what one prediction of the recipe takes (the default: EPIR flipped and three STSTNet teachers)."""
    from epir import make_config
    from epir.engine.cost import prediction_cost

    assert main(["profile", "--model", "epir", "--set", "model.dim=16", "--set", "model.heads=2", "--recipe",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    cost = prediction_cost(make_config("epir", overrides=["model.dim=16", "model.heads=2"]), (3, 28, 28))
    assert row["recipe"] == "default" and row["flops_per_sample"] == cost.flops
    assert (row["params_total"], row["flops_total"]) == (cost.params_total, cost.flops_total)
    assert row["flops_total"] > 2 * row["flops_per_sample"] and row["params_total"] == row["params"] + 3 * 1683
    assert row["latency_total_ms_b1"] > 0
    assert main(["profile", "--model", "ststnet", "--recipe", "official"]) == 0
    out = capsys.readouterr().out
    assert "ststnet, recipe official: one prediction takes 1,683 parameters, 780,000 FLOPs per sample and " in out
    assert main(["profile", "--model", "ststnet", "--recipe", "nope"]) == 2
    assert "has no recipe 'nope'" in capsys.readouterr().err


def test_a_lever_already_in_the_full_configuration_becomes_a_minus_arm() -> None:
    """A lever the default already has (say the recipe adopted mixup) is ablated by turning it off: -<lever>."""
    from epir import make_config
    from epir.engine.ablate import LEVER_OFF, LEVERS, lever_arm
    from epir.errors import ConfigError

    cfg = make_config("epir", "synthetic")
    assert lever_arm(cfg, "mixup")[0] == "+mixup"
    with_mixup = make_config("epir", "synthetic", overrides=["train.mixup=0.4"])
    name, arm = lever_arm(with_mixup, "mixup")
    assert name == "-mixup" and arm.train.mixup == 0
    wide = make_config("epir", "synthetic", overrides=list(LEVERS["wide"]))
    name, arm = lever_arm(wide, "wide")
    assert name == "-wide" and arm.model.args["dim"] == 48
    assert set(LEVER_OFF) <= set(LEVERS)
    with pytest.raises(ConfigError, match="no 'off' setting"):
        lever_arm(make_config("epir", "synthetic", overrides=list(LEVERS["distill"])), "distill")
    with pytest.raises(ConfigError, match="no lever"):
        lever_arm(cfg, "mixupp")


def test_median_ms_calls_warmup_plus_repeats() -> None:
    from epir.profiling import median_ms

    calls = []
    ms = median_ms(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and ms >= 0.0


def test_every_lever_on_the_default_recipe_is_an_arm_that_can_run() -> None:
    """+distill on the default (group teachers, which refuse soft targets) failed when its arm came to train, after the
    arms before it had run for hours."""
    from epir import make_config
    from epir.config import check_ranges
    from epir.engine.ablate import LEVERS, lever_arm
    from epir.engine.loso import check_before_training
    from epir.runsetup import resolve_config

    cfg = make_config("epir", "megc2019")
    for lever in set(LEVERS) - {"pretrain"}:  # pretrain's arm needs its weights file (tested in test_pretrain)
        _, arm = lever_arm(cfg, lever)
        check_ranges(resolve_config(arm))
        check_before_training(resolve_config(arm))


def test_an_arm_that_cannot_run_stops_the_ablation_before_any_arm(fake_root, tmp_path, capsys, monkeypatch):
    import epir.engine.ablate as ablate

    trained: list[str] = []
    monkeypatch.setattr(ablate, "run_loso", lambda *a, **k: trained.append("arm"))
    code = main(["ablate", "--model", "epir", "--dataset", "megc2019", "--root", str(fake_root), "--recipe", "alone",
                 "--levers", "tta", "teacher-ensemble", "--out", str(tmp_path / "a"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "ablation arm +teacher-ensemble: train.distill_members=3: expected 1 without a teacher" in err
    assert trained == [] and not (tmp_path / "a").exists()


def test_the_class_weight_lever_is_a_minus_arm_of_the_default() -> None:
    """EPIR's recipe weighs classes inversely to their counts: the default's arm is -balanced (plain cross-entropy),
    STSTNet's official recipe, which does not, gets +balanced."""
    from epir import make_config
    from epir.engine.ablate import lever_arm

    name, arm = lever_arm(make_config("epir", "megc2019"), "balanced")
    assert name == "-balanced" and arm.train.class_weight == "none"
    name, arm = lever_arm(make_config("ststnet", "megc2019"), "balanced")
    assert name == "+balanced" and arm.train.class_weight == "balanced"


def test_smooth_lever_smooths_the_maps_the_run_trains_on(fake_dataset) -> None:
    """+smooth sets data.input_transform=smooth, and the run's data are then every map smoothed and renormalised
    (epir.data.transforms.smooth_maps); on a configuration that has it, the arm is -smooth."""
    from epir import make_config
    from epir.data.transforms import smooth_maps
    from epir.engine.ablate import lever_arm
    from epir.runsetup import prepare_data, resolve_config

    name, arm = lever_arm(make_config("epir", "megc2019"), "smooth")
    assert name == "+smooth" and arm.data.input_transform == "smooth"
    data, report = prepare_data(resolve_config(arm), fake_dataset)
    assert torch.equal(data.x, smooth_maps(fake_dataset.x)) and report["input_transform"] == "smooth"
    name, off = lever_arm(arm, "smooth")
    assert name == "-smooth" and off.data.input_transform == "none"


def test_the_square_root_lever_is_a_plus_arm_of_the_default_and_weighs_the_square_root() -> None:
    """balanced-sqrt keeps the balanced loss at power 0.5: each class's weight the square root of the default's."""
    from epir import make_config
    from epir.engine.ablate import lever_arm
    from epir.engine.train import class_weights

    default = make_config("epir", "megc2019")
    name, arm = lever_arm(default, "balanced-sqrt")
    assert name == "+balanced-sqrt" and arm.train.class_weight == "balanced" and arm.train.class_weight_power == 0.5
    y = torch.tensor([0] * 6 + [1] * 3 + [2])
    full = class_weights(y, 3, default.train)
    assert full is not None and torch.allclose(full, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    half = class_weights(y, 3, arm.train)
    assert half is not None and torch.allclose(half, full.sqrt())
    name, back = lever_arm(arm, "balanced-sqrt")
    assert name == "-balanced-sqrt" and back.train == default.train
    name, off = lever_arm(arm, "balanced")
    assert name == "-balanced" and off.train.class_weight == "none" and off.train.class_weight_power == 1


def test_the_official_order_lever_sorts_ststnets_rows_by_class_and_nothing_else() -> None:
    """official-order on STSTNet's recipe (already unshuffled) changes only the order; taken off, the recipe is
    back; on a shuffling recipe it also stops the shuffle (a fixed order needs it)."""
    from epir import make_config
    from epir.engine.ablate import lever_arm

    ststnet = make_config("ststnet", "megc2019")
    name, arm = lever_arm(ststnet, "official-order")
    assert name == "+official-order" and arm.train == replace(ststnet.train, order="by-class")
    name, back = lever_arm(arm, "official-order")
    assert name == "-official-order" and back.train == ststnet.train
    _, on_epir = lever_arm(make_config("epir", "megc2019"), "official-order")
    assert not on_epir.train.shuffle and on_epir.train.order == "by-class"


def test_list_levers_describes_every_lever_and_its_arm_on_the_model(capsys) -> None:
    """`epir list levers`: every lever of epir ablate, a line on what it does, the arm it makes on --model's default
    recipe (+ adds it, - takes it away) and the settings that arm changes."""
    from epir.engine.ablate import LEVER_NOTES, LEVERS

    assert set(LEVER_NOTES) == set(LEVERS) and all(LEVER_NOTES.values())
    assert main(["list", "levers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines if not line.startswith(" ")}
    assert list(rows) == list(LEVERS)
    assert rows["balanced"] == "-balanced" and rows["balanced-sqrt"] == "+balanced-sqrt" and rows["tta"] == "-tta"
    settings = lines[lines.index(next(line for line in lines if line.startswith("balanced "))) + 1]
    assert settings.split() == ["train.class_weight=none", "train.class_weight_power=1"]
    assert main(["list", "levers", "--model", "ststnet"]) == 0
    out = capsys.readouterr().out
    assert "\ntta                  +tta " in out and "\nwide                 (not on this model) " in out

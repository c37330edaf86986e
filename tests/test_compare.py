"""`epir compare` end to end on fake data with tiny models."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from epir.cli import main
from epir.config import RunConfig
from epir.engine.agreement import CELLS
from epir.engine.compare import arm_levers, parse_arm, recipes_header, split_overrides, with_levers
from epir.engine.uncertainty import holm
from epir.errors import ConfigError, UnknownNameError

TINY = ["--set", "epir:model.dim=12", "--set", "epir:model.heads=2", "--set", "epir:model.projection_dim=8",
        "--set", "htnet:model.dim=16", "--set", "htnet:model.heads=2", "--set", "htnet:model.block_repeats=[1,1,1]",
        "--set", "htnet:data.input_transform=mosaic"]


def test_split_overrides():
    got = split_overrides(["epir", "htnet"], ["train.epochs=2", "epir:model.dim=8"])
    assert got == {"epir": ["train.epochs=2", "model.dim=8"], "htnet": ["train.epochs=2"]}
    with pytest.raises(ConfigError, match="not one of the compared models"):
        split_overrides(["epir"], ["ststnet:model.num_classes=3"])
    arms = ["epir", "epir+smooth", "epir@alone", "epir@alone+smooth"]
    got = split_overrides(arms, ["epir@alone:a=1", "epir@alone+smooth:b=2", "epir:c=3", "epir+smooth:d=4"])
    assert got == {"epir": ["c=3"], "epir+smooth": ["c=3", "d=4"], "epir@alone": ["a=1", "c=3"],
                   "epir@alone+smooth": ["a=1", "b=2", "c=3"]}


def test_compare_three_models_same_folds(fake_root, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--models", "epir", "htnet", "ststnet", "--dataset", "megc2019", "--root", str(fake_root),
                 "--folds", "casme2/sub01", "samm/006", "--epochs", "1", "--batch-size", "8", "--threads", "1",
                 "--out", str(out), "--no-progress", *TINY])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["name"]) == ["epir", "htnet", "ststnet"]
    for col in ("uf1", "uf1_std", "uar", "uar_std", "params", "flops_per_sample", "latency_ms_b1", "fold_seconds"):
        assert col in table.columns
    assert (out / "scores.png").stat().st_size > 1000
    for m in ("epir", "htnet", "ststnet"):
        assert (out / f"confusion_{m}.png").is_file()
        assert (out / m / "megc_log.txt").is_file() and (out / m / "predictions.csv").is_file()
        preds = pd.read_csv(out / m / "predictions.csv")
        assert sorted(preds["subject"].unique()) == ["casme2/sub01", "samm/006"]  # the same folds for all
    assert "mosaic" in (out / "htnet" / "config.yaml").read_text()
    md = (out / "comparison.md").read_text()
    assert "| htnet |" in md
    # every other model minus the first, on the same samples: a paired subject bootstrap
    diffs = json.loads((out / "differences.json").read_text())
    assert [d["names"] for d in diffs] == [["htnet", "epir"], ["ststnet", "epir"]]
    assert all(d["subjects"] == 2 and d["uf1"]["ci"][0] <= d["uf1"]["difference"] <= d["uf1"]["ci"][1] for d in diffs)
    assert "| htnet - epir |" in md and "paired subject bootstrap" in md
    # the two differences are one family: Holm's adjustment beside each p
    for key in ("uf1", "uar"):
        assert [d[key]["p_holm"] for d in diffs] == holm([d[key]["p_not_better"] for d in diffs])
    assert "Holm: P(A not better) adjusted for the 2 comparisons" in md
    # where each other arm errs against the first (one seed: the first has no row of its own seeds)
    agreed = json.loads((out / "agreement.json").read_text())
    assert agreed["reference"] == "epir" and list(agreed["versus"]) == ["htnet", "ststnet"] and agreed["within"] is None
    for name, row in agreed["versus"].items():
        assert row["names"] == [name, "epir"] and row["samples"] == len(preds) and row["seed_pairs"] == 1
        assert sum(row[c] for c in CELLS) == pytest.approx(1) and f"| {name} vs epir | 1 |" in md
    assert "Where the arms err, against epir" in md and "a bound, not a result" in md


def test_arms_of_one_model(fake_root, tmp_path, capsys):
    """MODEL@RECIPE compares recipes of one model on the same folds: each arm its own recipe and run folder."""
    out = tmp_path / "cmp"
    code = main(["compare", "--models", "epir", "epir@alone", "epir@alone+smooth", "--dataset", "megc2019", "--root",
                 str(fake_root), "--folds", "casme2/sub01", "samm/006", "--epochs", "1", "--batch-size", "8",
                 "--threads", "1", "--out", str(out), "--no-progress", *TINY[:6],
                 "--set", "epir@alone:train.lr=0.002"])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["name"]) == ["epir", "epir@alone", "epir@alone+smooth"]
    # +LEVER: the recipe's arm with an epir ablate lever on (and what reaches the recipe reaches it too)
    smooth = RunConfig.load(out / "epir@alone+smooth" / "config.yaml")
    assert smooth.data.input_transform == "smooth" and smooth.train.lr == 2e-3 and smooth.train.distill == ""
    table = table.iloc[:2]
    # the default mixes in its fold's STSTNet teachers: they count in the whole, not in the model's own parameters
    (own, total), (alone_own, alone_total) = table[["params", "params_total"]].to_numpy().tolist()
    teacher = json.loads((out / "epir" / "results.json").read_text())["teacher"]["params"]
    assert own == alone_own and total == own + teacher and alone_total == alone_own
    assert f"| {own:,} (all {total:,}) |" in (out / "comparison.md").read_text()
    # FLOPs of one whole prediction too: the default's flip and its teachers; latency measured for every arm
    flops, flops_total = table[["flops_per_sample", "flops_total"]].to_numpy()[0].tolist()
    assert flops_total > flops and f"| {flops:,} (all {flops_total:,}) |" in (out / "comparison.md").read_text()
    latencies = pd.read_csv(out / "comparison.csv")[["latency_ms_b1", "latency_total_ms_b1"]]
    assert (latencies > 0).all().all()
    default, alone = (RunConfig.load(out / arm / "config.yaml") for arm in ("epir", "epir@alone"))
    assert default.train.distill == "ststnet" and alone.train.distill == ""  # each arm's own recipe
    assert default.model.args["dim"] == alone.model.args["dim"] == 12  # epir: reaches every arm of the model
    assert (default.train.lr, alone.train.lr) == (1e-3, 2e-3)  # epir@alone: reaches that arm only
    assert (out / "confusion_epir@alone.png").is_file()
    diffs = json.loads((out / "differences.json").read_text())
    assert [d["names"] for d in diffs] == [["epir@alone", "epir"], ["epir@alone+smooth", "epir"]]
    header = (out / "comparison.md").read_text().splitlines()[0]
    # each arm's recipe, with the settings given on top of it (round 20: a shortened arm no longer reads "default"),
    # those every arm shares said once (round 21)
    arms, shared = header.split("recipes: ")[1].split("; every arm with ")
    assert arms.startswith("epir default, epir@alone with train.lr=0.002, epir@alone+smooth with train.lr=0.002")
    assert "model.dim=12" in shared and "train.epochs=1" in shared and "model.dim" not in arms
    assert "eval." not in header


def test_the_recipes_header_says_shared_settings_once():
    per = {"epir": ["train.epochs=20", "eval.threads=1", "train.lr=1e-3"],
           "epir@alone": ["train.epochs=20", "eval.threads=1", "train.lr=1e-3", "train.lr=2e-3"],
           "ststnet": ["train.epochs=20", "train.lr=1e-3"]}
    # the last value of a key counts; eval.* is how a run executes, not what it learns
    assert recipes_header(list(per), {"ststnet": "official-order"}, per) == (
        "recipes: epir default with train.lr=1e-3, epir@alone with train.lr=2e-3, ststnet official-order with "
        "train.lr=1e-3; every arm with train.epochs=20")
    assert recipes_header(["epir"], {}, {"epir": ["train.epochs=20"]}) == "recipes: epir default with train.epochs=20"
    assert recipes_header(["epir", "ststnet"], {}, {}) == "recipes: epir default, ststnet default"


def test_arm_names_are_checked():
    assert parse_arm("epir") == ("epir", None) and parse_arm("htnet@cpu") == ("htnet", "cpu")
    assert parse_arm("epir@alone+smooth+mixup") == ("epir", "alone")
    assert arm_levers("epir@alone+smooth+mixup") == ["smooth", "mixup"] and arm_levers("epir@alone") == []
    with pytest.raises(ConfigError, match="no lever 'smoth'.*Did you mean 'smooth'"):
        parse_arm("epir+smoth")
    with pytest.raises(ConfigError, match="expected MODEL or MODEL@RECIPE"):
        parse_arm("epir+")
    from epir import make_config
    with pytest.raises(ConfigError, match="lever 'tta' is already on in 'epir'"):  # the default flips at test time
        with_levers("epir+tta", make_config("epir"))
    with pytest.raises(ConfigError, match="Did you mean 'cpu'"):
        parse_arm("htnet@cpuu")
    with pytest.raises(ConfigError, match="expected MODEL or MODEL@RECIPE"):
        parse_arm("epir@")
    with pytest.raises(UnknownNameError, match="Did you mean 'htnet'"):
        parse_arm("htnett@cpu")
    assert split_overrides(["epir", "epir@alone", "ststnet"], ["epir:model.dim=8", "epir@alone:train.lr=1"]) == {
        "epir": ["model.dim=8"], "epir@alone": ["model.dim=8", "train.lr=1"], "ststnet": []}


def test_compare_oracle_protocol_is_labelled(fake_root, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "ststnet", "--dataset", "megc2019", "--root", str(fake_root),
                 "--folds", "casme2/sub01", "--epochs", "1", "--protocol", "oracle-epoch", "--threads", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert "oracle-epoch (optimistic)" in (out / "comparison.md").read_text()
    assert "oracle-epoch (optimistic)" in capsys.readouterr().out


def test_compare_unknown_model(tmp_path, capsys):
    assert main(["compare", "--models", "epir", "htnett", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "Did you mean 'htnet'" in capsys.readouterr().err


def test_compare_a_model_named_twice(tmp_path, capsys):
    """The second run resumed the first's folder and the table showed one run as two rows."""
    assert main(["compare", "--models", "epir", "ststnet", "epir", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "names 'epir' more than once" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()



def test_named_recipes(tmp_path, capsys):
    from epir.models import default_recipe, list_recipes
    from epir.models.htnet import HTNET_CPU_RECIPE, HTNET_OFFICIAL_RECIPE

    assert list_recipes("htnet") == ["default", "official", "cpu"]
    assert default_recipe("htnet") == HTNET_OFFICIAL_RECIPE and default_recipe("htnet", "cpu") == HTNET_CPU_RECIPE
    with pytest.raises(ConfigError, match="Did you mean 'cpu'"):
        default_recipe("htnet", "cpuu")
    out = tmp_path / "r"
    # a named recipe lands in the resolved config (the run itself is cut short by --epochs 1)
    assert main(["loso", "--model", "ststnet", "--recipe", "official", "--folds", "synthetic/s01", "--epochs", "1",
                 "--threads", "1", "--out", str(out), "--no-progress"]) == 0
    assert "lr: 5.0e-05" in (out / "config.yaml").read_text()
    from epir.models.ststnet import STSTNET_RECIPE

    # the official code's order (round 20): the official recipe with the rows sorted by class, nothing else
    assert list_recipes("ststnet") == ["default", "official", "official-order"]
    assert default_recipe("ststnet", "official-order") == replace(STSTNET_RECIPE, order="by-class")
    assert main(["compare", "--models", "ststnet", "--recipe", "htnet:cpu", "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 2
    assert "not one of the compared models" in capsys.readouterr().err


def test_latencies_are_measured_in_turn_on_one_thread(monkeypatch) -> None:
    """Every arm's model in turn, round after round, on one torch thread (restored after): under load from other
    processes the rows slow alike and compare."""
    import torch

    from epir.config import ModelConfig
    from epir.engine import tables

    seen: list[tuple[str, int]] = []

    def fake(model: torch.nn.Module, **_: object) -> float:
        name = type(model).__name__
        name = f"whole {type(model.model).__name__}" if name == "InferenceModel" else name
        seen.append((name, torch.get_num_threads()))
        return {"EPIR": 2.0, "STSTNet": 1.0}.get(name, 3.0 if "EPIR" in name else 1.5)

    monkeypatch.setattr(tables, "measure_latency", fake)
    threads = torch.get_num_threads()
    rows: list[dict] = [{"name": "ststnet"}, {"name": "epir"}]
    configs = [RunConfig(model=ModelConfig(name="ststnet")),
               RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}))]
    tables.add_latencies(rows, configs, rounds=2, repeats=1)
    assert [name for name, _ in seen] == ["STSTNet", "whole STSTNet", "EPIR", "whole EPIR"] * 2
    assert {n for _, n in seen} == {1} and torch.get_num_threads() == threads
    assert [r["latency_ms_b1"] for r in rows] == [1.0, 2.0]
    assert [r["latency_total_ms_b1"] for r in rows] == [1.5, 3.0]


def test_the_whole_prediction_module_is_what_the_cost_counts() -> None:
    """prediction_module runs what prediction_cost counts: the default's flip and its three teachers, and on a
    one-network recipe the network alone; the latency cell shows the whole beside the model where they differ."""
    from epir import make_config
    from epir.engine.cost import prediction_cost, prediction_module
    from epir.engine.tables import latency_cell
    from epir.profiling import count_flops, count_parameters

    for cfg in (make_config("epir", "megc2019", overrides=["model.dim=16", "model.heads=2"]),
                make_config("ststnet", "megc2019")):
        whole, cost = prediction_module(cfg), prediction_cost(cfg, (3, 28, 28))
        assert count_parameters(whole) == cost.params_total and count_flops(whole) == cost.flops_total
        assert not whole.training
    row = {"latency_ms_b1": 1.19, "latency_total_ms_b1": 2.9154, "params": 10, "params_total": 20,
           "flops_per_sample": 5, "flops_total": 14}
    assert latency_cell(row) == "1.190 (all 2.915)"
    assert latency_cell({**row, "params_total": 10, "flops_total": 5}) == "1.190"

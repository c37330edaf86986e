"""Single-dataset evaluation (``--subset``) and ``epir report`` (issue 8)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from epir.cli import main
from epir.engine.loso import evaluation_of, make_config, run_loso, select_sources
from epir.engine.metrics import megc_scores
from epir.engine.report import build_report, config_label, to_latex, to_markdown, write_report
from epir.errors import ConfigError

TINY = ["--model", "ststnet", "--epochs", "2", "--batch-size", "8", "--no-progress"]


def _loso(tmp: Path, root: Path, name: str, *extra: str) -> Path:
    out = tmp / name
    assert main(["loso", "--dataset", "megc2019", "--root", str(root), "--out", str(out), *TINY, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(fake_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report_runs")
    return {
        "cde": _loso(tmp, fake_root, "cde", "--seeds", "0", "1"),
        "sde_casme2": _loso(tmp, fake_root, "sde_casme2", "--subset", "casme2", "--seeds", "0", "1"),
        "sde_samm": _loso(tmp, fake_root, "sde_samm", "--subset", "samm", "--seeds", "0", "1"),
        "oracle": _loso(tmp, fake_root, "oracle", "--oracle-epoch"),
    }


def test_sde_folds_hold_only_the_chosen_datasets(runs: dict[str, Path]) -> None:
    preds = pd.read_csv(runs["sde_casme2"] / "predictions.csv", dtype={"subject_id": str})
    assert set(preds["source"]) == {"casme2"}
    folds = sorted(p.stem for p in (runs["sde_casme2"] / "folds" / "seed0").glob("*.json"))
    assert folds == ["casme2__sub01", "casme2__sub02"]
    for f in (runs["sde_casme2"] / "folds" / "seed0").glob("*.json"):
        assert json.loads(f.read_text())["n_train"] == 4  # trained on the other CASME II subject only


def test_sde_is_labelled_everywhere(runs: dict[str, Path], fake_root: Path, capsys) -> None:
    run = runs["sde_samm"]
    assert json.loads((run / "results.json").read_text())["evaluation"] == "SDE(samm)"
    assert "SDE(samm)" in (run / "megc_log.txt").read_text().splitlines()[0]
    assert main(["evaluate", str(run)]) == 0
    assert "evaluation: SDE(samm)" in capsys.readouterr().out
    assert main(["evaluate", "--megc-log", str(run / "megc_log.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluation"] == "SDE(samm)"
    assert json.loads((runs["cde"] / "results.json").read_text())["evaluation"] == "CDE"


def test_several_sources_in_one_subset(fake_dataset) -> None:
    cfg = make_config("ststnet", overrides=["data.subset=[casme2, smic]"])
    assert evaluation_of(cfg) == "SDE(casme2+smic)"
    assert set(select_sources(fake_dataset, cfg.data.subset).sources) == {"casme2", "smic"}


def test_unknown_subset_is_a_clear_error(fake_dataset) -> None:
    with pytest.raises(ConfigError, match=r"no source dataset 'casme' .*Did you mean 'casme2'.*casme2, samm, smic"):
        select_sources(fake_dataset, ["casme"])


def test_subset_and_folds_outside_it(fake_dataset) -> None:
    cfg = make_config("ststnet", overrides=["data.subset=[casme2]", "train.epochs=1"], folds=["samm/006"])
    with pytest.raises(ConfigError, match="samm/006"):
        run_loso(cfg, fake_dataset, progress=False)


def test_cde_per_dataset_equals_metrics_of_that_datasets_pooled_predictions(runs: dict[str, Path]) -> None:
    results = json.loads((runs["cde"] / "results.json").read_text())
    preds = pd.read_csv(runs["cde"] / "predictions.csv", dtype={"subject_id": str})
    assert set(results["per_dataset"]) == set(preds["source"]) and results["per_dataset"]  # not vacuous
    for src, entry in results["per_dataset"].items():
        per_seed = [megc_scores(d["true"], d["predicted"], 3) for _, d in preds[preds["source"] == src].groupby("seed")]
        assert entry["uf1"] == pytest.approx(np.mean([m["uf1"] for m in per_seed]))
        assert entry["uar"] == pytest.approx(np.mean([m["uar"] for m in per_seed]))
        assert entry["uf1_std"] == pytest.approx(np.std([m["uf1"] for m in per_seed], ddof=1))


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d\.\d{4}", text)]


def test_report_renders_the_same_numbers_in_all_formats(runs: dict[str, Path], tmp_path: Path) -> None:
    table = build_report([runs["cde"], runs["sde_casme2"], runs["sde_samm"]])
    assert len(table) == 1
    row = table.iloc[0]
    cde = json.loads((runs["cde"] / "results.json").read_text())
    sde = json.loads((runs["sde_casme2"] / "results.json").read_text())
    assert row["full_uf1"] == pytest.approx(cde["uf1"])
    assert row["cde_samm_uar"] == pytest.approx(cde["per_dataset"]["samm"]["uar"])
    assert row["sde_casme2_uf1"] == pytest.approx(sde["uf1"])
    assert row["sde_casme2_uf1_std"] == pytest.approx(sde["uf1_std"])
    assert pd.isna(row.get("sde_smic_uf1", np.nan))  # no SDE(smic) run: an empty cell, not a made-up one
    paths = write_report(table, tmp_path / "rep")
    csv = pd.read_csv(paths["csv"])
    metric_cols = [c for c in csv.columns if c.endswith(("_uf1", "_uar", "_uf1_std", "_uar_std"))]
    expected = [round(float(csv.iloc[0][c]), 4) for c in metric_cols]
    md_row = [ln for ln in paths["md"].read_text().splitlines() if ln.startswith("| ststnet")][0]
    tex_row = [ln for ln in paths["tex"].read_text().splitlines() if ln.startswith("ststnet")][0]
    # each cell is "mean ± std" (markdown) or "mean $\pm$ std" (LaTeX), columns in the CSV's order
    assert _numbers(md_row) == pytest.approx(expected, abs=1e-4)
    assert _numbers(tex_row) == pytest.approx(expected, abs=1e-4)
    assert "\\begin{tabular}" in paths["tex"].read_text()
    assert "SAMM (SDE)" in paths["md"].read_text() and "CASME II (SDE)" in paths["md"].read_text()


def test_mixed_protocols_are_separate_marked_rows(runs: dict[str, Path]) -> None:
    table = build_report([runs["cde"], runs["oracle"]])
    assert list(table["protocol"]) == ["honest", "oracle-epoch (optimistic)"]
    md, tex = to_markdown(table), to_latex(table)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ststnet")]
    assert not rows[0].split("|")[1].strip().endswith("†") and rows[1].split("|")[1].strip().endswith("†")
    assert "oracle-epoch (optimistic)" in md
    assert "$^\\dagger$ &" in tex and "optimistic" in tex
    assert "Unmarked rows: honest" in md


def test_two_runs_for_one_cell_is_an_error(runs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="two runs give"):
        build_report([runs["sde_casme2"], runs["sde_casme2"]])


def test_settings_that_differ_from_the_defaults_name_the_row() -> None:
    assert config_label(make_config("epir")) == "epir"
    assert config_label(make_config("htnet", recipe="cpu", overrides=["data.input_transform=mosaic"])) == \
        "htnet (recipe cpu; mosaic input)"
    assert config_label(make_config("epir", overrides=["model.dtsm=false"])) == "epir (dtsm=False)"
    # another named recipe with a change: named by the recipe it is nearest, then the change
    assert config_label(make_config("epir", recipe="alone", overrides=["train.epochs=2"])) == \
        "epir (recipe alone; train.epochs=2)"
    assert config_label(make_config("epir", overrides=["train.epochs=2"])) == "epir (train.epochs=2)"


def test_report_cli_and_compare_directories(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    parent = tmp_path / "several"
    parent.mkdir()
    for name in ("cde", "sde_samm"):
        (parent / name).symlink_to(runs[name], target_is_directory=True)
    assert main(["report", str(parent), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "Full (CDE) UF1" in out and "SAMM (SDE) UF1" in out
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"report.md", "report.csv", "report.tex", "report.html"}
    csv = pd.read_csv(tmp_path / "rep" / "report.csv")  # each run's subject-bootstrap interval, last
    assert list(csv.columns[-8:]) == [f"{c}_{k}_ci_{e}" for c in ("full", "sde_samm") for k in ("uf1", "uar")
                                      for e in ("low", "high")]
    cde = json.loads((runs["cde"] / "results.json").read_text())
    assert [csv["full_uf1_ci_low"].dropna().iloc[0], csv["full_uf1_ci_high"].dropna().iloc[0]] == cde["uf1_ci"]
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_params_cell_counts_every_network_that_predicts() -> None:
    """A run whose teacher or ensemble members predict too shows its own and the whole's parameters."""
    import pandas as pd

    from epir.engine.report import _params

    assert _params(pd.Series({"params": 99585, "params_total": 101268})) == "99,585 (all 101,268)"
    assert _params(pd.Series({"params": 1683, "params_total": 1683})) == "1,683"
    assert _params(pd.Series({"params": 1683})) == "1,683"

"""Run outputs: results.json, predictions.csv, MEGC2019 logs, and `epir evaluate` recomputing them."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from epir.cli import main
from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig
from epir.engine.evaluate import evaluate_megc_log, evaluate_run_dir
from epir.engine.loso import run_loso
from epir.engine.results import HONEST, ORACLE, read_megc_log, summarize, write_megc_log
from epir.errors import DatasetError, DatasetNotFoundError
from epir.models import default_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("negative", "positive", "surprise")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fake_root) -> Path:
    """One finished tiny LOSO run (STSTNet, 3 epochs, on the fake composite) through the CLI."""
    import torch

    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("results") / "run"
    code = main(["loso", "--model", "ststnet", "--dataset", "megc2019", "--root", str(fake_root),
                 "--epochs", "3", "--lr", "0.01", "--threads", "1", "--out", str(out), "--no-progress"])
    torch.set_num_threads(before)
    assert code == 0
    return out


def fake_predictions() -> pd.DataFrame:
    rows = [
        ("casme2", "sub01", "EP02_01f", 1, 1),
        ("casme2", "sub01", "EP19_05f", 0, 2),
        ("samm", "006", "006_1_2", 0, 0),
        ("samm", "006", "006_1_3", 2, 2),
        ("smic", "s03", "s3_po_05", 1, 0),
        ("smic", "s03", "s3_sur_01", 2, 2),
    ]
    df = pd.DataFrame(rows, columns=["source", "subject_id", "clip", "true", "predicted"])
    df["subject"] = df["source"] + "/" + df["subject_id"]
    df["seed"] = 0
    return df


# ------------------------------------------------------------------------------------------ megc log


def test_megc_log_round_trip(tmp_path) -> None:
    preds = fake_predictions()
    path = tmp_path / "log.txt"
    write_megc_log(preds, path, HONEST)
    text = path.read_text().splitlines()
    assert text[0] == "# protocol: honest"
    assert text[1] == "casme2 sub01" and text[2] == "EP02_01f 1 1"
    back = read_megc_log(path)
    cols = ["source", "subject_id", "subject", "clip", "true", "predicted", "seed"]
    pd.testing.assert_frame_equal(back[cols], preds[cols], check_dtype=False)
    assert back["subject_id"].tolist() == ["sub01", "sub01", "006", "006", "s03", "s03"]  # zero padding kept


@pytest.mark.filterwarnings("ignore:.*absent from the ground truth:UserWarning")
def test_megc_log_protocol_is_read_back(tmp_path) -> None:
    path = tmp_path / "log.txt"
    write_megc_log(fake_predictions(), path, ORACLE)
    assert evaluate_megc_log(path)["protocol"] == ORACLE


@pytest.mark.filterwarnings("ignore:.*absent from the ground truth:UserWarning")
def test_megc_log_of_the_official_form_without_comment(tmp_path) -> None:
    path = tmp_path / "official.txt"
    path.write_text("casme2 sub01\r\nEP02_01f 1 1\r\nEP19_05f 0 0\r\n\r\nsmic s03\r\ns3_sur_01 2 2\r\n")
    with pytest.warns(UserWarning, match=r"\[0, 1\] absent from the ground truth in per_dataset\[smic\]"):
        res = evaluate_megc_log(path)
    assert res["protocol"] == "unknown"  # a log that does not say is never assumed honest
    assert res["uf1"] == 1.0 and res["uar"] == 1.0 and res["n"] == 3


@pytest.mark.parametrize(
    "content, line",
    [
        ("casme2 sub01\nEP02_01f 1 1\nEP19_05f 0 x\n", 3),  # non-integer label
        ("# protocol: honest\ncasme2 sub01\nEP02_01f 1 1 7\n", 3),  # four fields
        ("EP02_01f 1 1\ncasme2 sub01\n", 1),  # sample before any header
        ("casme2 sub01\nEP02_01f 1 1\n\nlonely\n", 4),  # one field
        ("casme2 sub01\nEP02_01f 1\n", 2),  # a sample line missing a field is not a header
        ("casme2 sub01\nEP02_01f 1 7\n", 2),  # class id out of range
        ("casme2 sub01\nEP02_01f -1 0\n", 2),  # negative label
        ("casme2 sub01\nEP02_01f 100000 0\n", 2),  # no huge allocation
        ("casme2 sub01\nEP02_01f 1 1\nEP02_01f 1 0\n", 3),  # duplicate
    ],
)
def test_bad_log_lines_name_the_line(tmp_path, content: str, line: int) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=rf"line {line}\b"):
        read_megc_log(path)


def test_log_protocol_only_from_the_top_and_non_utf8(tmp_path) -> None:
    path = tmp_path / "late.txt"
    path.write_text("casme2 sub01\nEP02_01f 1 1\n# protocol: honest\n")
    with pytest.warns(UserWarning):
        assert evaluate_megc_log(path)["protocol"] == "unknown"
    path.write_bytes(b"casme2 sub01\nEP02\xff 1 1\n")
    with pytest.raises(DatasetError, match="UTF-8"):
        read_megc_log(path)


def test_empty_or_missing_log(tmp_path) -> None:
    (tmp_path / "empty.txt").write_text("# protocol: honest\ncasme2 sub01\n")
    with pytest.raises(DatasetError, match="no predictions"):
        read_megc_log(tmp_path / "empty.txt")
    with pytest.raises(DatasetNotFoundError):
        read_megc_log(tmp_path / "absent.txt")


# --------------------------------------------------------------------------------------- run outputs


def test_results_json_keys(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    for key in ("uf1", "uar", "protocol", "per_dataset", "seeds", "per_seed", "confusion", "per_subject"):
        assert key in res
    assert res["protocol"] == HONEST
    assert set(res["per_dataset"]) == {"casme2", "samm", "smic"}
    for entry in res["per_dataset"].values():
        assert 0.0 <= entry["uf1"] <= 1.0 and 0.0 <= entry["uar"] <= 1.0
        assert entry["n"] == 8
    assert res["n"] == 24 and res["n_folds"] == 6
    assert np.asarray(res["confusion"]).sum() == 24


def test_predictions_csv(run_dir: Path) -> None:
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str, "clip": str})
    for col in ("subject", "clip", "true", "predicted", "seed", "source"):
        assert col in preds.columns
    prob_cols = [f"prob_{c}" for c in CLASSES]
    assert [c for c in preds.columns if c.startswith("prob_")] == prob_cols
    assert len(preds) == 24
    assert np.allclose(preds[prob_cols].sum(axis=1), 1.0, atol=1e-5)
    assert (preds[prob_cols].to_numpy().argmax(1) == preds["predicted"].to_numpy()).all()
    assert set(preds["true"]) == {0, 1, 2}
    assert preds["subject"].nunique() == 6
    assert "samm/006" in set(preds["subject"])  # zero-padded ids survive the CSV
    assert (preds["true_name"] == preds["true"].map(dict(enumerate(CLASSES)))).all()


def test_results_json_matches_predictions_csv(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str, "clip": str})
    again = summarize(preds, CLASSES, HONEST)
    assert again["uf1"] == pytest.approx(res["uf1"]) and again["uar"] == pytest.approx(res["uar"])
    for src, entry in res["per_dataset"].items():
        assert again["per_dataset"][src]["uf1"] == pytest.approx(entry["uf1"])


def test_megc_log_of_the_run_matches_predictions(run_dir: Path) -> None:
    log = read_megc_log(run_dir / "megc_log.txt")
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str, "clip": str})
    assert log["clip"].tolist() == preds["clip"].tolist()
    assert log["true"].tolist() == preds["true"].tolist()
    assert log["predicted"].tolist() == preds["predicted"].tolist()
    assert log["subject"].tolist() == preds["subject"].tolist()


def test_evaluate_megc_log_cli_matches_results_json(run_dir: Path, capsys) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    assert main(["evaluate", "--megc-log", str(run_dir / "megc_log.txt"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["uf1"] == pytest.approx(res["uf1"], abs=1e-12)
    assert got["uar"] == pytest.approx(res["uar"], abs=1e-12)
    assert got["protocol"] == res["protocol"]
    for src, entry in res["per_dataset"].items():
        assert got["per_dataset"][src]["uf1"] == pytest.approx(entry["uf1"], abs=1e-12)
        assert got["per_dataset"][src]["uar"] == pytest.approx(entry["uar"], abs=1e-12)


def test_evaluate_run_dir_cli_matches_results_json(run_dir: Path, capsys) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["uf1"] == pytest.approx(res["uf1"], abs=1e-12)
    assert got["uar"] == pytest.approx(res["uar"], abs=1e-12)
    assert got["protocol"] == res["protocol"]
    assert got["n"] == res["n"]
    assert got["per_dataset"].keys() == res["per_dataset"].keys()
    assert evaluate_run_dir(run_dir)["uf1"] == pytest.approx(res["uf1"])


def test_evaluate_text_summary(run_dir: Path, capsys) -> None:
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "protocol: honest" in out and "UF1" in out and "casme2" in out


def test_evaluate_needs_exactly_one_source(run_dir: Path, capsys) -> None:
    assert main(["evaluate"]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--megc-log", str(run_dir / "megc_log.txt")]) == 2


def test_evaluate_missing_run_dir(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "predictions.csv" in err and "Traceback" not in err


def test_evaluate_keeps_the_oracle_label(tmp_path, fake_dataset, capsys) -> None:
    cfg = RunConfig(
        model=ModelConfig("ststnet"),
        data=DataConfig(dataset="megc2019"),
        train=replace(default_recipe("ststnet"), epochs=2),
        eval=EvalConfig(oracle_epoch=True, threads=1),
    )
    out = tmp_path / "run"
    run_loso(cfg, fake_dataset, out, progress=False)
    assert main(["evaluate", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"] == ORACLE
    assert main(["evaluate", "--megc-log", str(out / "megc_log.txt")]) == 0
    assert "oracle-epoch (optimistic)" in capsys.readouterr().out


def test_evaluate_given_a_log_file_as_run_dir_names_megc_log(tmp_path) -> None:
    log = tmp_path / "submission.txt"
    log.write_text("casme2 sub01\nEP02_01f 1 1\n")
    with pytest.raises(DatasetNotFoundError, match=r"is a file, not a run directory.*--megc-log"):
        evaluate_run_dir(log)


@pytest.mark.parametrize("edit, message", [
    (lambda df: df.assign(predicted=[9, *df["predicted"][1:]]), r"line 2: predicted is '9'; expected a class 0\.\.2"),
    (lambda df: df.assign(predicted=["x", *df["predicted"][1:]]), r"line 2: predicted is 'x'"),
    (lambda df: df.assign(true=["", *df["true"][1:]]), r"line 2: true is ''"),
    (lambda df: df.assign(seed=[0.5, *df["seed"][1:]]), r"line 2: seed is '0.5'; expected a whole number"),
    # NaN is written as an empty cell
    (lambda df: df.assign(prob_negative=[float("nan"), *df["prob_negative"][1:]]), r"line 2: prob_negative is ''"),
    (lambda df: df.assign(prob_negative=[2.0, *df["prob_negative"][1:]]), r"line 2: prob_negative is '2.0'"),
    (lambda df: df.assign(prob_negative=df["prob_negative"] / 2), r"line 2: .*to sum to 1"),
    (lambda df: pd.concat([df, df.iloc[[1]]]), r"line \d+: clip is .*once per seed"),
    (lambda df: pd.concat([df, df.assign(seed=1).iloc[1:]]), r"seed 1 has \d+ samples and seed 0"),
    (lambda df: pd.concat([df, df.assign(seed=1, true=(df["true"] + 1) % 3)]), r"seed 1 gives some samples other"),
    (lambda df: df.iloc[:0], r"no rows"),
    (lambda df: df.drop(columns=["prob_negative", "prob_positive", "prob_surprise"]), r"no prob_<class> columns"),
    (lambda df: df.drop(columns=["true"]), r"missing columns \['true'\]"),
])
def test_a_damaged_predictions_csv_is_refused_by_line(run_dir: Path, tmp_path, edit, message) -> None:
    """``epir evaluate`` scores nothing from an edited predictions.csv: each damage names its line and the fix."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.yaml", "results.json"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    df = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str, "clip": str})
    edit(df).to_csv(copy / "predictions.csv", index=False)
    with pytest.raises(DatasetError, match=message) as info:
        evaluate_run_dir(copy)
    assert "rerun the run's `epir loso` command with the same --out" in str(info.value)


def test_a_predicted_class_that_is_not_the_argmax_is_refused(run_dir: Path, tmp_path, capsys) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    df = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str, "clip": str})
    probs = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy()
    row = int(np.flatnonzero(probs.max(1) > 0.5)[0])  # a clear winner, so any other class is not it
    df.loc[row, "predicted"] = (int(probs[row].argmax()) + 1) % 3
    df.to_csv(copy / "predictions.csv", index=False)
    assert main(["evaluate", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"line {row + 2}: predicted" in err and "largest probability" in err and "Traceback" not in err
    (copy / "predictions.csv").write_text("")
    assert main(["evaluate", str(copy)]) == 2
    assert "the file is empty" in capsys.readouterr().err


def test_report_refuses_a_results_json_whose_scores_are_not_scores(run_dir: Path, tmp_path, capsys) -> None:
    for value in ("0.7", float("nan"), 7.0, True):
        copy = tmp_path / f"run-{value}"
        copy.mkdir()
        (copy / "config.yaml").write_bytes((run_dir / "config.yaml").read_bytes())
        res = json.loads((run_dir / "results.json").read_text())
        res["per_dataset"]["samm"]["uar"] = value
        (copy / "results.json").write_text(json.dumps(res))
        assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 2
        err = capsys.readouterr().err
        assert f"per_dataset[samm]: uar is {value!r}; expected a finite number in [0, 1]" in err, err
        assert "Traceback" not in err and not (tmp_path / "report").exists()

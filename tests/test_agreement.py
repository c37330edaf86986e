"""Where two runs err (epir.engine.agreement) and `epir evaluate --agreement`."""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from epir.cli import main
from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig
from epir.engine.agreement import CELLS, agreement, agreement_markdown, q_difference
from epir.engine.evaluate import KEPT_AS, agreement_of_runs, agreements, read_parts, read_scored
from epir.engine.loso import run_loso
from epir.engine.results import format_summary
from epir.errors import ConfigError
from epir.models import default_recipe
from fakes import CLASSES, run_predictions, write_run_dir


def run(true: list[int], *predicted: list[int]) -> pd.DataFrame:
    """One subject per two samples, one seed per list of predictions."""
    rows = [(seed, f"casme2/s{i // 2}", "casme2", f"c{i}", t, p)
            for seed, preds in enumerate(predicted) for i, (t, p) in enumerate(zip(true, preds))]
    return pd.DataFrame(rows, columns=["seed", "subject", "source", "clip", "true", "predicted"])


TRUE = [0, 0, 0, 0, 1, 1, 2, 2]


def test_cells_by_hand() -> None:
    a = run(TRUE, [0, 0, 0, 1, 1, 2, 2, 0])  # wrong on samples 3, 5, 7
    b = run(TRUE, [0, 0, 1, 1, 0, 1, 2, 0])  # wrong on samples 2, 3, 4, 7; 3 and 7 with A's class
    got = agreement(a, b, class_names=CLASSES)
    assert [got[c] for c in CELLS] == [3 / 8, 2 / 8, 1 / 8, 2 / 8]  # both right: 0, 1, 6; only A: 2, 4; only B: 5
    assert got["same_error"] == 2 / 8 and got["disagreement"] == 3 / 8
    assert got["q"] == pytest.approx((3 * 2 - 2 * 1) / (3 * 2 + 2 * 1), abs=1e-6)
    assert got["ceiling"] == {"accuracy": 6 / 8, "uar": pytest.approx((3 / 4 + 2 / 2 + 1 / 2) / 3, abs=1e-6)}
    negative, positive, surprise = got["per_class"]
    assert (negative["name"], negative["n"], negative["only_a"], negative["both_wrong"]) == ("negative", 4, 0.25, 0.25)
    assert (positive["only_a"], positive["only_b"], surprise["both_wrong"], surprise["same_error"]) == (0.5, 0.5, 0.5,
                                                                                                        0.5)
    assert got["samples"] == 8 and got["seed_pairs"] == 1 and got["seeds"] == [[0], [0]]


def test_q_interval_resamples_subjects() -> None:
    """Q's interval: subjects drawn with replacement, reproducible with its seed, around Q; a resample that leaves Q
    undefined leaves no interval; fewer than 100 resamples is a one-line error."""
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 120).tolist()
    noisy = [[t if rng.random() < 0.7 else (t + 1) % 3 for t in true] for _ in range(2)]
    a, b = run(true, noisy[0]), run(true, noisy[1])
    got = agreement(a, b, class_names=CLASSES, resamples=500)
    low, high = got["q_ci"]
    assert low < got["q"] < high and got["level"] == 0.95
    assert agreement(a, b, class_names=CLASSES, resamples=500)["q_ci"] == got["q_ci"]  # seeded
    assert agreement(a, b, class_names=CLASSES, resamples=500, seed=1)["q_ci"] != got["q_ci"]
    narrower = agreement(a, b, class_names=CLASSES, resamples=500, level=0.5)["q_ci"]
    assert low < narrower[0] <= narrower[1] < high
    same = agreement(a, a, class_names=CLASSES, resamples=200)
    assert same["q"] == 1.0 and same["q_ci"] == [1.0, 1.0]
    # two subjects, the errors all in the second: a quarter of the resamples draw the first twice and have no error
    sparse = agreement(run([0, 0, 1, 1], [0, 0, 0, 0]), run([0, 0, 1, 1], [0, 0, 0, 0]), class_names=CLASSES,
                       resamples=200)
    assert sparse["q"] == 1.0 and sparse["q_ci"] is None
    with pytest.raises(ConfigError, match="resamples must be a whole number >= 100"):
        agreement(a, b, class_names=CLASSES, resamples=10)
    one = run([0, 1, 2, 0], [0, 1, 1, 1]).assign(subject="casme2/s0")  # a run of one held-out subject
    alone = agreement(one, one, class_names=CLASSES)
    assert alone["q"] == 1.0 and alone["q_ci"] is None
    with pytest.raises(ConfigError, match="cover 1 subject; a paired bootstrap needs at least 2"):
        q_difference(one, one, one)


def test_q_difference_is_paired_over_the_same_subjects() -> None:
    """Q(A, C) - Q(B, C) on the same resampled subjects: a run that errs where C does against one that errs at
    random; each Q as agreement() gives it; swapped, the difference changes sign; too few errors is an error."""
    rng = np.random.default_rng(1)
    true = rng.integers(0, 3, 160).tolist()
    wrong_c = rng.random(160) < 0.3
    c = run(true, [(t + 1) % 3 if w else t for t, w in zip(true, wrong_c)])
    like_c = run(true, [(t + 1) % 3 if (w and rng.random() < 0.8) or rng.random() < 0.05 else t
                        for t, w in zip(true, wrong_c)])
    apart = run(true, [(t + 2) % 3 if rng.random() < 0.3 else t for t in true])
    got = q_difference(like_c, apart, c, names=("like", "apart", "C"), resamples=500)
    assert got["q"] == [agreement(x, c, class_names=CLASSES)["q"] for x in (like_c, apart)]
    assert got["difference"] == pytest.approx(got["q"][0] - got["q"][1], abs=1e-6)
    assert 0 < got["ci"][0] < got["difference"] < got["ci"][1] and got["p_not_higher"] < 0.05
    assert got["names"] == ["like", "apart", "C"] and got["subjects"] == 80 and got["resamples"] == 500
    swapped = q_difference(apart, like_c, c, resamples=500)
    assert swapped["difference"] == -got["difference"] and swapped["p_not_higher"] > 0.95
    with pytest.raises(ConfigError, match="Q of A or B with C is undefined"):
        q_difference(run(TRUE, TRUE), run(TRUE, TRUE), run(TRUE, TRUE), resamples=100)


def test_seeds_average_over_pairs() -> None:
    preds = ([0, 0, 0, 1, 1, 2, 2, 0], [1, 0, 0, 0, 1, 1, 2, 2])
    b = run(TRUE, [0, 0, 1, 1, 0, 1, 2, 0])
    both = agreement(run(TRUE, *preds), b, class_names=CLASSES)
    each = [agreement(run(TRUE, p), b, class_names=CLASSES) for p in preds]
    assert both["seed_pairs"] == 2
    for key in (*CELLS, "same_error"):
        assert both[key] == pytest.approx((each[0][key] + each[1][key]) / 2, abs=1e-6)
    assert both["ceiling"]["accuracy"] == pytest.approx(1 - both["both_wrong"], abs=1e-6)


def test_a_runs_own_seeds() -> None:
    own = agreement(run(TRUE, [0, 0, 0, 1, 1, 2, 2, 0], [1, 0, 0, 0, 1, 1, 2, 2], TRUE), class_names=CLASSES)
    assert own["seed_pairs"] == 6 and own["names"] == ["A"] and own["only_a"] == own["only_b"]
    same = agreement(run(TRUE, [0, 0, 0, 1, 1, 2, 2, 0]), run(TRUE, [0, 0, 0, 1, 1, 2, 2, 0]), class_names=CLASSES)
    assert same["q"] == 1.0 and same["disagreement"] == 0 and same["same_error"] == same["both_wrong"] == 3 / 8
    assert agreement(run(TRUE, TRUE), run(TRUE, TRUE), class_names=CLASSES)["q"] is None  # nothing wrong: no Q
    with pytest.raises(ConfigError, match="has one seed .0.; agreement between a run's seeds needs at least 2"):
        agreement(run(TRUE, TRUE), class_names=CLASSES)


def test_bad_tables_are_one_line() -> None:
    a = run(TRUE, [0, 0, 0, 1, 1, 2, 2, 0], TRUE)
    with pytest.raises(ConfigError, match="not the same ones"):
        agreement(a, run(TRUE[:6], TRUE[:6]), class_names=CLASSES)
    with pytest.raises(ConfigError, match="other true labels"):
        agreement(a, run([1, *TRUE[1:]], TRUE), class_names=CLASSES)
    with pytest.raises(ConfigError, match="A holds sample casme2/s0/c0 twice under seed 0"):
        agreement(pd.concat([a, a.iloc[:1]]), class_names=CLASSES)
    with pytest.raises(ConfigError, match="A: seed 1 has 7 samples and seed 0 8, not the same ones"):
        agreement(a.drop(index=a.index[-1]), class_names=CLASSES)
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['predicted'\]"):
        agreement(a.drop(columns="predicted"), class_names=CLASSES)


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Run a of three seeds and run b of one, over the same 10 subjects."""
    return (write_run_dir(tmp_path / "a", run_predictions(n_subjects=10, seeds=(0, 1, 2), accuracy=0.8)),
            write_run_dir(tmp_path / "b", run_predictions(n_subjects=10, seeds=(0,), accuracy=0.5)))


def test_evaluate_agreement(two_runs: tuple[Path, Path], capsys) -> None:
    a, b = two_runs
    assert main(["evaluate", str(a), "--versus", str(b), "--agreement", "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert f"A = {a}, B = {b}" in text and "Where the runs err" in text and "a bound, not a result" in text
    lines = {line.split("  ")[1].strip(): line for line in text.splitlines() if line.startswith("  A")}
    assert set(lines) == {"A vs B", "A's seeds"}  # b has one seed: no row of its own
    assert "negative (n=" in text and "B's seeds" not in text
    assert main(["evaluate", str(a), "--versus", str(b), "--agreement", "--json", "--resamples", "200"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["uf1"]["difference"] > 0  # the paired bootstrap is still there
    assert got["agreement"]["versus"]["seed_pairs"] == 3 and list(got["agreement"]["within"]) == [str(a)]
    assert got["agreement"]["within"][str(a)]["seed_pairs"] == 6
    assert main(["evaluate", str(a), "--agreement"]) == 0
    text = capsys.readouterr().out
    assert "UF1" in text and f"A = {a}\n" in text and "A's seeds" in text and "A vs B" not in text
    assert main(["evaluate", str(a), "--agreement", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agreement"]["versus"] is None
    assert main(["evaluate", str(b), "--agreement"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has one seed (0); agreement between a run's seeds needs at least 2" in err and "\n" not in err


def test_agreements_of_compared_arms(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    agreed = agreements({"b": b, "a": a}, "a")  # the reference need not be given first
    assert list(agreed["versus"]) == ["b"] and agreed["within"]["seed_pairs"] == 6
    md = agreement_markdown(agreed)
    assert md.startswith("Where the arms err, against a (") and "| b vs a | 3 |" in md and "| a's own seeds | 6 |" in md
    assert agreement_markdown(agreements({"b": b}, "b")) == ""  # one run of one seed: nothing to say


def test_the_parts_of_a_blended_run(fake_dataset, tmp_path, capsys, monkeypatch) -> None:
    """--parts: a teacher-mix run's model alone against its teacher, read from the fold files; each part's
    predictions are the argmax of the probabilities the fold kept for it."""
    out = tmp_path / "mixed"
    cfg = RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                    data=DataConfig(dataset="megc2019"),
                    train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet", distill_weight=0.0,
                                  distill_overrides=("train.epochs=1",), distill_mix=0.5),
                    eval=EvalConfig(threads=1, report=False, seeds=(0, 1),
                                    folds=tuple(fake_dataset.subject_list()[:3])))
    run_loso(cfg, fake_dataset, out_dir=out, progress=False)
    parts = read_parts(out)
    for part, key in KEPT_AS.items():
        kept = {(r["seed"], r["subject"], clip): p for f in sorted((out / "folds").rglob("*.json"))
                for r in [json.loads(f.read_text())] for clip, p in zip(r["clips"], r[key])}
        table = parts[part].predictions
        assert len(table) == len(kept)
        for row in table.itertuples(index=False):
            probs = [row.prob_negative, row.prob_positive, row.prob_surprise]
            assert probs == kept[(row.seed, row.subject, row.clip)] and row.predicted == int(np.argmax(probs))
    assert main(["evaluate", str(out), "--agreement", "--parts"]) == 0
    text = capsys.readouterr().out
    assert f"A = {out} model, B = {out} teacher" in text and "A's seeds" in text and "B's seeds" in text
    # results.json keeps the same figures (parts_agreement), and the summary line of the parts gives them
    stored = json.loads((out / "results.json").read_text())["parts_agreement"]
    read = agreement_of_runs(out, parts=True)["versus"]
    assert stored["names"] == ["model", "teacher"]
    assert {k: v for k, v in stored.items() if k != "names"} == {k: v for k, v in read.items() if k != "names"}
    results = json.loads((out / "results.json").read_text())
    assert f"where they err: both wrong {stored['both_wrong']:.3f}" in format_summary(results)
    for damaged in ({"q": 0.5}, "x", {**stored, "ceiling": None}):  # a hand-edited file: the line without it
        text = format_summary({**results, "parts_agreement": damaged})
        assert "blended with weight 0.5" in text and "where they err" not in text
    # benchmarks/blend_bound.py reads the same parts (and checks them against results.json) for its bounds
    spec = importlib.util.spec_from_file_location("blend_bound", Path(__file__).parents[1] / "benchmarks" /
                                                  "blend_bound.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["blend_bound.py", str(out)])
    bench.main()
    text = capsys.readouterr().out
    assert text.startswith("OPTIMISTIC BOUNDS") and text.count(f"| {out.name} |") == 6 and "- (as results.json)" in text
    assert main(["evaluate", str(out), "--parts"]) == 0  # alone: what each part scores
    text = capsys.readouterr().out
    assert text.startswith(f"Each part of {out} alone") and "  model " in text and "  teacher " in text
    assert main(["evaluate", "--megc-log", str(out / "megc_log.txt"), "--parts"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--parts reads a run's parts from its fold files: give a RUN_DIR" in err and "\n" not in err
    with pytest.raises(ConfigError, match="give one run, without --versus"):
        agreement_of_runs(out, out, parts=True)
    # --versus --parts: the same students with another teacher (2 epochs instead of 1): the blends and the teachers
    # differ, the models alone not at all
    other = tmp_path / "mixed-other-teacher"
    run_loso(replace(cfg, train=replace(cfg.train, distill_overrides=("train.epochs=2",))), fake_dataset,
             out_dir=other, progress=False)
    assert main(["evaluate", str(other), "--versus", str(out), "--parts", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got["parts"]) == {"model", "teacher"}
    model, teacher = got["parts"]["model"], got["parts"]["teacher"]
    assert model["names"] == [f"{other} model", f"{out} model"] and teacher["names"] == [f"{other} teacher",
                                                                                           f"{out} teacher"]
    assert model["uf1"]["difference"] == model["uar"]["difference"] == 0.0 and model["uf1"]["ci"] == [0.0, 0.0]
    both = read_parts(other)["teacher"].predictions, parts["teacher"].predictions
    assert not both[0]["prob_negative"].equals(both[1]["prob_negative"])
    assert teacher["uf1"]["a"] == pytest.approx(read_scored_part_uf1(other)) and teacher["uf1"]["b"] == pytest.approx(
        read_scored_part_uf1(out))
    assert main(["evaluate", str(other), "--versus", str(out), "--parts"]) == 0
    text = capsys.readouterr().out
    for name in (f"{other} - {out}", f"{other} model - {out} model", f"{other} teacher - {out} teacher"):
        assert f"{name}, paired subject bootstrap" in text
    fold = next((out / "folds").rglob("*.json"))
    rec = json.loads(fold.read_text())
    fold.write_text(json.dumps({k: v for k, v in rec.items() if k != "model_probs"}))  # as before round 17
    assert main(["evaluate", str(out), "--agreement", "--parts"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{fold} does not keep the model's own probabilities" in err and "\n" not in err
    fold.write_text(json.dumps({**rec, "true": [(rec["true"][0] + 1) % 3, *rec["true"][1:]]}))  # another run's file
    assert main(["evaluate", str(out), "--agreement", "--parts"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{out}: its fold files and its predictions.csv disagree" in err and "other true labels" in err
    assert "\n" not in err


def read_scored_part_uf1(run_dir: Path) -> float:
    """The teacher part's UF1, pooled over the folds and averaged over the seeds (a run's own score)."""
    from epir.engine.metrics import megc_scores
    table = read_parts(run_dir)["teacher"].predictions
    return float(np.mean([megc_scores(t["true"].to_numpy(), t["predicted"].to_numpy(), 3)["uf1"]
                          for _, t in table.groupby("seed")]))


def test_parts_of_a_run_without_teacher(two_runs: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="has no teacher .* and no in-fold ensemble"):
        read_parts(two_runs[0])


def test_errs_like_benchmark_reads_runs_against_a_reference(tmp_path, monkeypatch, capsys) -> None:
    """benchmarks/errs_like.py: each run's scores, its paired difference and Q against the reference, its own seeds'
    Q, and the paired Q difference of the later runs from the first."""
    reference = run_predictions(n_subjects=16, seeds=(0,))
    rng = np.random.default_rng(3)

    def like(p: pd.DataFrame, flip: float, seeds: tuple[int, ...]) -> pd.DataFrame:
        out = []
        for s in seeds:
            d = p.assign(seed=s)
            moved = rng.random(len(d)) < flip
            d.loc[moved, "predicted"] = (d.loc[moved, "predicted"] + 1) % 3
            out.append(d)
        return pd.concat(out, ignore_index=True)

    dirs = [write_run_dir(tmp_path / "ref", reference), write_run_dir(tmp_path / "close", like(reference, 0.1, (0,))),
            write_run_dir(tmp_path / "far", like(reference, 0.4, (0, 1)))]
    spec = importlib.util.spec_from_file_location("errs_like", Path(__file__).parents[1] / "benchmarks" /
                                                  "errs_like.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["errs_like.py", *map(str, dirs), "--resamples", "200"])
    bench.main()
    text = capsys.readouterr().out
    assert text.startswith(f"reference: {dirs[0]}") and text.count("minus the reference: UF1") == 2
    assert text.count("its own seeds: Q") == 1  # only the run of two seeds
    close_q = agreement(read_scored(dirs[1]).predictions, reference, class_names=CLASSES)["q"]
    assert f"Q {close_q:.3f} [" in text
    assert f"Q({dirs[2]}, reference) - Q({dirs[1]}, reference) = " in text

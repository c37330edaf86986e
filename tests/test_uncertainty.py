"""Subject-bootstrap intervals and paired differences (epir.engine.uncertainty), in results and `epir evaluate`."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from epir.cli import main
from epir.engine.metrics import megc_scores
from epir.engine.records import LosoResults
from epir.engine.results import HONEST, format_summary, summarize, write_results
from epir.engine.uncertainty import (
    bootstrap_ci,
    holm,
    paired_contrast,
    paired_difference,
    scores_of_counts,
    subject_counts,
    subject_differences,
)
from epir.errors import ConfigError
from fakes import CLASSES, with_probs, write_run_dir
from fakes import run_predictions as predictions


@pytest.mark.parametrize("absent", ["skip", "zero"])
def test_vectorised_scores_match_megc_scores(absent: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        true = rng.integers(0, 2 if rng.random() < 0.3 else 3, 40)  # sometimes a class is absent
        pred = rng.integers(0, 3, 40)
        counts, _ = subject_counts(pd.DataFrame({"seed": 0, "subject": "a", "true": true, "predicted": pred}), 3)
        uf1, uar = scores_of_counts(counts[0, 0], absent)
        with pytest.warns(UserWarning) if (np.bincount(true, minlength=3) == 0).any() else _nothing():
            ref = megc_scores(true, pred, 3, absent)
        assert float(uf1) == pytest.approx(ref["uf1"]) and float(uar) == pytest.approx(ref["uar"])


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_interval_holds_the_point_and_is_reproducible() -> None:
    df = predictions()
    ci = bootstrap_ci(df, 3)
    assert ci is not None and ci["subjects"] == 12 and ci["unit"] == "subject" and ci["resamples"] == 2000
    point = megc_scores(df["true"], df["predicted"], 3)
    assert ci["uf1"][0] < point["uf1"] < ci["uf1"][1] and ci["uar"][0] < point["uar"] < ci["uar"][1]
    assert bootstrap_ci(df, 3) == ci  # the generator is seeded
    assert bootstrap_ci(df, 3, seed=1) != ci
    narrow = bootstrap_ci(df, 3, level=0.5)
    assert narrow is not None and ci["uf1"][0] <= narrow["uf1"][0] <= narrow["uf1"][1] <= ci["uf1"][1]


def test_bca_and_basic_intervals() -> None:
    """The other ways to read an interval off the same resamples: near the percentile one on a well-behaved run,
    recorded in the result, and finite where every resample scores the same (BCa's jackknife has no spread there)."""
    df = predictions(n_subjects=30)
    point = megc_scores(df["true"], df["predicted"], 3)
    pct = bootstrap_ci(df, 3)
    assert pct is not None
    for method in ("bca", "basic"):
        ci = bootstrap_ci(df, 3, method=method)
        assert ci is not None and ci["method"] == method and ci["uf1"] != pct["uf1"]
        assert ci["uf1"][0] < point["uf1"] < ci["uf1"][1]
        assert abs(ci["uf1"][0] - pct["uf1"][0]) < 0.05 and abs(ci["uf1"][1] - pct["uf1"][1]) < 0.05
    alike = pd.DataFrame([(0, f"s{s}", "x", f"c{j}", j, j) for s in range(5) for j in range(3)],
                         columns=["seed", "subject", "source", "clip", "true", "predicted"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = bootstrap_ci(alike, 3, method="bca")
    assert ci is not None and ci["uf1"] == [1.0, 1.0] and ci["uar"] == [1.0, 1.0]
    diff = paired_difference(df, df, 3, method="bca")
    assert diff["method"] == "bca" and diff["uf1"]["ci"] == [0.0, 0.0]
    with pytest.raises(ConfigError, match="interval method 'BCa' is not one of"):
        bootstrap_ci(df, 3, method="BCa")


def test_subject_differences() -> None:
    """Each subject's accuracy under A and B (the mean over each run's seeds), largest A - B first, the win/loss
    count and the sign test."""
    b = predictions(n_subjects=10, accuracy=0.5)
    a = b.copy()
    better = a["subject"].isin(["casme2/s01", "casme2/s03", "samm/s04"])
    a.loc[better, "predicted"] = a.loc[better, "true"]  # A right on every sample of three subjects
    a2 = pd.concat([a, b.assign(seed=1)])  # A's seed 1 is B itself: A's accuracy there is the mean of the two
    got = subject_differences(a2, b, names=("a", "b"))
    assert got["names"] == ["a", "b"] and len(got["subjects"]) == 10
    first = got["subjects"][0]
    assert first["subject"] in ("casme2/s01", "casme2/s03", "samm/s04") and first["n"] == 6
    b_acc = (b[b["subject"] == first["subject"]]["true"] == b[b["subject"] == first["subject"]]["predicted"]).mean()
    assert first["a"] == pytest.approx((1 + b_acc) / 2, abs=1e-4) and first["b"] == pytest.approx(b_acc, abs=1e-4)
    differences = [r["difference"] for r in got["subjects"]]
    assert differences == sorted(differences, reverse=True)
    wins = sum(d > 0 for d in differences)
    assert (got["wins"], got["losses"], got["ties"]) == (wins, 0, 10 - wins) and wins <= 3
    assert got["sign_test_p"] == pytest.approx(2 * 0.5**wins if wins else 1.0, abs=1e-4)
    level = subject_differences(b, b)
    assert level["ties"] == 10 and level["sign_test_p"] == 1.0
    with pytest.raises(ConfigError, match="not the same ones"):
        subject_differences(b, predictions(n_subjects=5))


def test_holm_step_down() -> None:
    # sorted 0.01 0.03 0.04 0.5 -> x4 x3 x2 x1 = 0.04 0.09 0.08 0.5, kept non-decreasing: 0.04 0.09 0.09 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == [0.04, 0.09, 0.09, 0.5]
    assert holm([0.3, 0.6]) == [0.6, 0.6] and holm([0.2]) == [0.2] and holm([]) == []
    with pytest.raises(ConfigError, match="p-values in"):
        holm([0.1, 1.5])


def test_the_subject_is_what_is_resampled() -> None:
    """Two subjects, one always right and one always wrong: resampling samples would give a narrow interval around
    0.5 accuracy; resampling subjects draws the right one twice or the wrong one twice about half the time."""
    rows = [(0, subject, "x", f"c{j}", j % 3, j % 3 if subject == "right" else (j + 1) % 3)
            for subject in ("right", "wrong") for j in range(30)]
    df = pd.DataFrame(rows, columns=["seed", "subject", "source", "clip", "true", "predicted"])
    ci = bootstrap_ci(df, 3)
    assert ci is not None and ci["uar"][0] == pytest.approx(0.0) and ci["uar"][1] == pytest.approx(1.0)


def test_every_subject_alike_gives_no_spread_and_one_subject_no_interval() -> None:
    rows = [(0, f"s{s}", "x", f"c{j}", j, j) for s in range(5) for j in range(3)]  # all right, one of each class
    df = pd.DataFrame(rows, columns=["seed", "subject", "source", "clip", "true", "predicted"])
    ci = bootstrap_ci(df, 3)
    assert ci is not None and ci["uf1"] == [1.0, 1.0] and ci["uar"] == [1.0, 1.0]
    assert bootstrap_ci(df[df["subject"] == "s0"], 3) is None


def test_seeds_are_averaged_per_resample() -> None:
    one = predictions(seeds=(0,))
    twice = pd.concat([one, one.assign(seed=1)])  # the same predictions under two seeds: the same interval
    assert bootstrap_ci(twice, 3) == bootstrap_ci(one, 3)


def test_bad_options_and_tables_are_one_line_errors() -> None:
    df = predictions()
    with pytest.raises(ConfigError, match="resamples must be a whole number >= 100"):
        bootstrap_ci(df, 3, resamples=10)
    with pytest.raises(ConfigError, match=r"level must be a confidence level in \[0.5, 1\)"):
        bootstrap_ci(df, 3, level=95)
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['predicted'\]"):
        bootstrap_ci(df.drop(columns="predicted"), 3)
    with pytest.raises(ConfigError, match="absent-class policy"):
        bootstrap_ci(df, 3, absent="drop")


def test_paired_difference() -> None:
    b = predictions(accuracy=0.5, rng_seed=0)
    same = paired_difference(b, b, 3)
    assert same["uf1"]["difference"] == 0 and same["uf1"]["ci"] == [0.0, 0.0] and same["uf1"]["p_not_better"] == 1
    a = b.copy()
    a.loc[a.index[::2], "predicted"] = a["true"][::2]  # A puts right half of B's predictions
    d = paired_difference(a, b, 3, names=("better", "base"))
    for key in ("uf1", "uar"):
        r = d[key]
        assert r["difference"] > 0 and 0 < r["ci"][0] < r["difference"] < r["ci"][1]
        assert r["p_not_better"] < 0.05
        # at full precision, so that it prints as the run's own summary does (no rounding before the printing's)
        assert r["a"] == pytest.approx(megc_scores(a["true"], a["predicted"], 3)[key], abs=1e-12)
    assert d["names"] == ["better", "base"] and d["subjects"] == 12
    # other seeds are fine (each run's mean over its own)
    assert paired_difference(pd.concat([a, a.assign(seed=5)]), b, 3)["uf1"]["difference"] == d["uf1"]["difference"]


def test_paired_difference_needs_the_same_samples_and_labels() -> None:
    b = predictions()
    with pytest.raises(ConfigError, match="not the same ones .*samm/s00/clip0"):
        paired_difference(b[1:], b, 3)
    relabelled = b.copy()
    relabelled.loc[3, "true"] = (relabelled.loc[3, "true"] + 1) % 3
    with pytest.raises(ConfigError, match=r"give sample samm/s00/clip3 other true labels"):
        paired_difference(relabelled, b, 3)
    one = b[b["subject"] == "samm/s00"]
    with pytest.raises(ConfigError, match="at least 2"):
        paired_difference(one, one, 3)


def test_a_paired_contrast_weighs_runs_on_the_same_resampled_subjects() -> None:
    """(1, -1) is paired_difference exactly; (1, -1, -1, 1) a difference of differences, 0 with its interval where
    the two pairs are the same runs, and its value the weighted sum of the runs' own scores."""
    b = predictions(accuracy=0.5, rng_seed=0)
    a = b.copy()
    a.loc[a.index[::2], "predicted"] = a["true"][::2]
    c = predictions(accuracy=0.6, rng_seed=1)
    c["true"] = b["true"]
    d = paired_difference(a, b, 3)
    two = paired_contrast([a, b], [1, -1], 3)
    for key in ("uf1", "uar"):
        assert (two[key]["value"], two[key]["ci"], two[key]["p_not_above"]) == \
            (d[key]["difference"], d[key]["ci"], d[key]["p_not_better"])
        assert two[key]["scores"] == [d[key]["a"], d[key]["b"]]
    same = paired_contrast([a, b, a, b], [1, -1, -1, 1], 3)
    assert same["uf1"]["value"] == pytest.approx(0, abs=1e-12) and same["uf1"]["ci"] == pytest.approx([0, 0], abs=1e-12)
    dd = paired_contrast([a, b, c, b], [1, -1, -1, 1], 3, names=["A1", "A2", "B1", "B2"])
    for key in ("uf1", "uar"):
        sa, sb, sc, _ = dd[key]["scores"]
        assert dd[key]["value"] == pytest.approx((sa - sb) - (sc - sb), abs=1e-12)
        assert dd[key]["ci"][0] <= dd[key]["value"] <= dd[key]["ci"][1]
    assert dd["names"] == ["A1", "A2", "B1", "B2"] and dd["weights"] == [1.0, -1.0, -1.0, 1.0]


def test_the_learning_curve_benchmark_reads_the_first_arm_against_every_other(tmp_path, monkeypatch, capsys) -> None:
    """benchmarks/learning_curve.py with three arms: each other arm minus the first and the first's gain to share 1
    minus the other's, paired_contrast's figures, and each arm's stored time (``?`` where a results.json has none)."""
    arms, shares = ["m1", "m2", "m3"], [0.5, 1.0]
    runs = {(s, m): predictions(n_subjects=16, accuracy=acc, rng_seed=0 if k == 0 else 10 * k + j)
            for j, s in enumerate(shares) for k, (m, acc) in enumerate(zip(arms, (0.6, 0.7, 0.8)))}
    for (s, m), df in runs.items():
        write_run_dir(tmp_path / f"share-{s:g}" / m, df.assign(true=runs[(1.0, "m1")]["true"]))
    timed = tmp_path / "share-1" / "m1" / "results.json"
    timed.write_text(json.dumps({**json.loads(timed.read_text()), "wall_seconds_total": 12.0}))
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import learning_curve as bench  # noqa: PLC0415 (a script beside real_loso.py, imported from its folder)

    stub = type("Data", (), {"name": "fake", "subjects": [f"s{k}" for k in range(17)]})()
    monkeypatch.setattr(bench, "load_dataset", lambda *a, **k: stub)
    monkeypatch.setattr(bench, "run_compare", lambda *a, **k: None)  # the arms are stored: nothing to train
    monkeypatch.setattr("sys.argv", ["learning_curve.py", "--models", *arms, "--shares", "0.5", "--root", "x",
                                     "--out", str(tmp_path)])
    bench.main()
    text = capsys.readouterr().out
    head = next(line for line in text.splitlines() if line.startswith("| share"))
    assert head.count("− m1 UF1 [95% CI]") == 2 and "m1's gain to share 1 − m2's" in head \
        and "m1's gain to share 1 − m3's" in head
    assert "time over every invocation: m1 ? at 0.5, 12 s at 1; m2 ? at 0.5, ? at 1" in text
    half = next(line for line in text.splitlines() if line.startswith("| 0.5 |")).split(" | ")
    stored = {key: bench.read_run_dir(tmp_path / f"share-{key[0]:g}" / key[1]).predictions for key in runs}
    for other, cols in (("m2", 13), ("m3", 17)):
        gain = paired_contrast([stored[(1.0, "m1")], stored[(0.5, "m1")], stored[(1.0, other)],
                                stored[(0.5, other)]], [1, -1, -1, 1], 3)
        assert half[cols].startswith(f"{gain['uf1']['value']:+.3f} [")
        assert half[cols + 1].startswith(f"{gain['uar']['value']:+.3f} [")
        diff = paired_difference(stored[(0.5, other)], stored[(0.5, "m1")], 3)
        assert half[cols - 2].startswith(f"{diff['uf1']['difference']:+.3f} [")


def test_bad_paired_contrasts_are_one_line_errors() -> None:
    b = predictions()
    with pytest.raises(ConfigError, match="two or more runs with a weight and a name each; got 1 runs"):
        paired_contrast([b], [1], 3)
    with pytest.raises(ConfigError, match="got 2 runs, 1 weights"):
        paired_contrast([b, b], [1], 3)
    with pytest.raises(ConfigError, match="first has 72 samples and third 71, not the same ones"):
        paired_contrast([b, b, b[1:]], [1, -1, 1], 3, names=["first", "second", "third"])


def test_every_seed_of_a_table_holds_the_same_samples_and_labels() -> None:
    """Not only the first seed's: a table whose later seed is over other samples or labels is a one-line error in
    the interval and the paired difference alike, naming the seed and the sample."""
    b = predictions(seeds=(0, 1))
    assert bootstrap_ci(b, 3, resamples=100) is not None
    relabelled = b.copy()
    row = relabelled.index[(relabelled["seed"] == 1) & (relabelled["clip"] == "clip3")][0]
    relabelled.loc[row, "true"] = (relabelled.loc[row, "true"] + 1) % 3
    for call in (lambda: bootstrap_ci(relabelled, 3), lambda: paired_difference(relabelled, b, 3, names=("A", "B"))):
        with pytest.raises(ConfigError, match=r"seed 1 gives some samples other true labels than seed 0 "
                                              r"\(e.g. samm/s00/clip3: \d against \d\)"):
            call()
    with pytest.raises(ConfigError, match="B: seed 1 has .* samples and seed 0 .*, not the same ones"):
        paired_difference(b, b.drop(index=row), 3, names=("A", "B"))
    with pytest.raises(ConfigError, match="holds sample samm/s00/clip0 twice under seed 0"):
        bootstrap_ci(pd.concat([b, b.iloc[:1]]), 3)


def test_results_carry_the_intervals_and_the_summary_prints_them(tmp_path: Path) -> None:
    df = with_probs(predictions(seeds=(0, 1)))
    res = summarize(df, CLASSES, HONEST)
    assert res["ci"]["subjects"] == 12 and len(res["uf1_ci"]) == 2 and len(res["uar_ci"]) == 2
    for src, entry in res["per_dataset"].items():
        sub = bootstrap_ci(df[df["source"] == src], 3)
        assert sub is not None and entry["uf1_ci"] == sub["uf1"] and entry["uar_ci"] == sub["uar"]
    record = LosoResults.from_json(res)
    assert record.overall.uf1_ci == tuple(res["uf1_ci"]) and record.per_dataset["samm"].uar_ci is not None
    text = format_summary(res)
    assert "UF1 95% CI" in text and f"[{res['uf1_ci'][0]:.3f}, {res['uf1_ci'][1]:.3f}]" in text
    assert "subject bootstrap" in text and "± is the spread over seeds" in text
    # an older results.json without intervals still reads, and prints without the columns
    old = {k: v for k, v in res.items() if k not in ("uf1_ci", "uar_ci", "ci")}
    assert LosoResults.from_json(old).overall.uf1_ci is None and "CI" not in format_summary(old)
    for bad in ([0.8, 0.2], [0.1], "x", [0.1, 1.5]):
        with pytest.raises(ConfigError, match="uf1_ci is"):
            LosoResults.from_json({**res, "uf1_ci": bad}, "results.json")


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    b = predictions(accuracy=0.5, n_subjects=20)
    a = b.copy()
    a.loc[a.index[::2], "predicted"] = a["true"][::2]
    return write_run_dir(tmp_path / "a", a), write_run_dir(tmp_path / "b", b)


def test_evaluate_versus(two_runs: tuple[Path, Path], capsys) -> None:
    a, b = two_runs
    assert main(["evaluate", str(a), "--versus", str(b)]) == 0
    text = capsys.readouterr().out
    assert f"{a} - {b}, paired subject bootstrap (20 subjects, 2000 resamples)" in text
    assert "the interval excludes 0" in text and f"{a}: honest, seeds [0]" in text
    assert main(["evaluate", str(a), "--versus", str(b / "megc_log.txt"), "--json", "--resamples", "500"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["resamples"] == 500 and got["uf1"]["difference"] > 0 and got["protocols"] == [HONEST, HONEST]
    assert main(["evaluate", str(a), "--versus", str(a)]) == 0
    assert "the interval holds 0: not a difference" in capsys.readouterr().out
    assert main(["evaluate", str(a), "--versus", str(b), "--per-subject"]) == 0
    text = capsys.readouterr().out
    assert f"Per subject (accuracy, mean over seeds): {a} better on" in text and "sign test p =" in text
    assert main(["evaluate", str(a), "--versus", str(b), "--per-subject", "--json"]) == 0
    per_subject = json.loads(capsys.readouterr().out)["per_subject"]
    assert len(per_subject["subjects"]) == 20 and per_subject["losses"] == 0 and per_subject["wins"] > 0


def test_evaluate_interval_options(two_runs: tuple[Path, Path], capsys) -> None:
    a, _ = two_runs
    assert main(["evaluate", str(a), "--level", "0.8", "--resamples", "400", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["ci"]["level"] == 0.8 and got["ci"]["resamples"] == 400
    assert main(["evaluate", str(a), "--resamples", "5"]) == 2
    assert "resamples must be a whole number >= 100" in capsys.readouterr().err
    assert main(["evaluate", str(a), "--method", "bca"]) == 0
    assert "subject bootstrap (bca, 2000 resamples of 20 subjects)" in capsys.readouterr().out
    assert main(["evaluate", str(a), "--versus", str(a), "--method", "bca", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "bca"
    assert main(["evaluate", str(a), "--per-subject"]) == 2
    assert "give the other with --versus" in capsys.readouterr().err


def test_evaluate_versus_other_samples_is_one_line(two_runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    a, _ = two_runs
    other = with_probs(predictions(n_subjects=5))
    out = tmp_path / "other"
    out.mkdir()
    write_results(out, summarize(other, CLASSES, HONEST), other)
    assert main(["evaluate", str(a), "--versus", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not the same ones" in err and "compare runs on the same dataset and folds" in err and "\n" not in err
    assert main(["evaluate", str(a), "--versus", str(out / "results.json")]) == 2
    assert f"give its run directory ({out})" in capsys.readouterr().err

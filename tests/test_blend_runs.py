"""benchmarks/blend_runs.py: two finished runs' probabilities averaged at a fixed weight, per seed and sample."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from epir.engine.evaluate import read_scored
from epir.errors import ConfigError
from fakes import run_predictions, write_run_dir


def load_script():
    spec = importlib.util.spec_from_file_location("blend_runs", Path(__file__).parents[1] / "benchmarks" /
                                                  "blend_runs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_blend_is_the_weighted_mean_of_the_two_runs_probabilities(tmp_path: Path, capsys, monkeypatch) -> None:
    bench = load_script()
    a = write_run_dir(tmp_path / "a", run_predictions(n_subjects=8, seeds=(0, 1), accuracy=0.8, rng_seed=1))
    b_preds = run_predictions(n_subjects=8, seeds=(0, 1), accuracy=0.5, rng_seed=1)
    b = write_run_dir(tmp_path / "b", b_preds.sample(frac=1.0, random_state=0))  # row order plays no part
    ra, rb = read_scored(a), read_scored(b)
    probs = ["prob_negative", "prob_positive", "prob_surprise"]
    keys = ["seed", "subject", "clip"]
    for weight, run in ((0.0, ra), (1.0, rb)):  # the ends are the runs themselves
        mixed = bench.blend(ra, rb, weight, ("a", "b")).predictions.set_index(keys).sort_index()
        own = run.predictions.set_index(keys).sort_index()
        assert mixed["predicted"].tolist() == own["predicted"].tolist()
        np.testing.assert_allclose(mixed[probs].to_numpy(), own[probs].to_numpy())
    mixed = bench.blend(ra, rb, 0.25, ("a", "b")).predictions.set_index(keys).sort_index()
    want = 0.75 * ra.predictions.set_index(keys).sort_index()[probs].to_numpy() + \
        0.25 * rb.predictions.set_index(keys).sort_index()[probs].to_numpy()
    np.testing.assert_allclose(mixed[probs].to_numpy(), want)
    assert mixed["predicted"].tolist() == want.argmax(axis=1).tolist()

    monkeypatch.setattr(sys, "argv", ["blend_runs.py", str(a), str(b), "--versus", str(a), f"{a}+{b}",
                                      "--resamples", "200"])
    bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| blend | versus | blend UF1 |") and len([x for x in lines if x.startswith("| ")]) == 3
    assert "+0.0000 [+0.000, +0.000]" in lines[3]  # the blend against the same blend

    other = write_run_dir(tmp_path / "c", run_predictions(n_subjects=8, seeds=(0,), accuracy=0.5, rng_seed=1))
    with pytest.raises(ConfigError, match=r"has seeds \[0, 1\] and c \[0\]; blend runs of the same seeds"):
        bench.blend(ra, read_scored(other), 0.5, ("a", "c"))
    fewer = write_run_dir(tmp_path / "d", run_predictions(n_subjects=6, seeds=(0, 1), accuracy=0.5, rng_seed=1))
    with pytest.raises(ConfigError, match="not the same ones"):  # other samples under the same seeds
        bench.blend(ra, read_scored(fewer), 0.5, ("a", "d"))

"""Golden test on real data: epir's STSTNet port with the official per-subject weights reproduces the
official predictions subject by subject (and pooled UF1 0.7209 / UAR 0.7250) on the MEGC2019 composite.

Needs ``../shared/data`` (``$EPIR_SHARED_DATA``); skipped with a clear reason when absent.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig
from epir.data import load_dataset
from epir.engine.loso import run_loso
from epir.engine.results import FOLD_WEIGHTS
from epir.models import default_recipe

pytestmark = [pytest.mark.realdata, pytest.mark.usefixtures("one_torch_thread")]


def parse_official_log(path: Path) -> dict[str, list[tuple[int, int]]]:
    """``{subject_id: [(true, predicted), ...]}`` from the official STSTNet log's per-subject blocks."""
    out: dict[str, list[tuple[int, int]]] = {}
    subject, predicted = None, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if m := re.fullmatch(r"Subject:\s*(\S+)", line):
            subject, predicted = m.group(1), None
        elif m := re.fullmatch(r"Predicted\s*:\s*\[(.*)\]", line):
            predicted = [int(v) for v in m.group(1).split(",") if v.strip()]
        elif m := re.fullmatch(r"Ground Truth\s*:\s*\[(.*)\]", line):
            truth = [int(v) for v in m.group(1).split(",") if v.strip()]
            assert subject is not None and predicted is not None, f"malformed block near {line!r}"
            assert len(truth) == len(predicted), subject
            assert subject not in out, f"subject {subject} twice in the official log"
            out[subject] = list(zip(truth, predicted))
    return out


@pytest.fixture(scope="module")
def composite(real_data: Path):
    return load_dataset("megc2019", root=str(real_data / "htnet-composite"))


def test_real_loader_counts(composite) -> None:
    assert len(composite) == 442
    assert len(composite.subject_list()) == 68
    assert Counter(composite.sources) == {"casme2": 145, "samm": 133, "smic": 164}
    assert Counter(composite.y.tolist()) == {0: 250, 1: 109, 2: 83}
    assert tuple(composite.x.shape) == (442, 3, 28, 28)
    # subject ids never repeat across source datasets (fold weights are named by them)
    assert len(set(composite.subject_ids)) == 68


def test_official_weights_reproduce_official_predictions(real_data: Path, composite, tmp_path: Path) -> None:
    official_dir = real_data / "ststnet-official"
    official = parse_official_log(official_dir / "STSTNet_python_logfile.txt")
    assert len(official) == 68 and sum(map(len, official.values())) == 442

    cfg = RunConfig(
        model=ModelConfig(name="ststnet"),
        data=DataConfig(dataset="megc2019", root=str(real_data / "htnet-composite")),
        train=default_recipe("ststnet"),
        eval=EvalConfig(threads=1),
    )
    out = tmp_path / "golden"
    results = run_loso(cfg, composite, out, fold_weights=official_dir / "STSTNet_Weights", progress=False)
    assert results["protocol"] == FOLD_WEIGHTS
    assert results["n"] == 442 and results["n_folds"] == 68

    preds = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str, "clip": str})
    assert len(preds) == 442
    ours = {
        str(sid): Counter(zip(df["true"].tolist(), df["predicted"].tolist()))
        for sid, df in preds.groupby("subject_id", sort=False)
    }
    assert set(ours) == set(official)
    mismatched = {s: (dict(ours[s]), dict(Counter(official[s]))) for s in official if ours[s] != Counter(official[s])}
    assert not mismatched, f"{len(mismatched)} subjects differ from the official log: {mismatched}"

    assert round(results["uf1"], 4) == 0.7209
    assert round(results["uar"], 4) == 0.7250
    # the benchmark's resolution: how far 0.7209 moves with which subjects are held out (seeded subject bootstrap)
    assert results["ci"]["subjects"] == 68 and results["ci"]["unit"] == "subject"
    assert results["uf1_ci"] == pytest.approx([0.657, 0.777], abs=0.01)
    assert results["uar_ci"] == pytest.approx([0.665, 0.778], abs=0.01)

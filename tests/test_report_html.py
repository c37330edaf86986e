"""report.html in every run directory, training curves, and the page rendered by a real (headless) browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig
from epir.engine.loso import run_loso
from epir.models import default_recipe


def tiny_cfg(**eval_kw) -> RunConfig:
    eval_kw.setdefault("threads", 1)
    return RunConfig(model=ModelConfig(name="ststnet"), data=DataConfig(dataset="megc2019"),
                     train=replace(default_recipe("ststnet"), epochs=3), eval=EvalConfig(**eval_kw))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from fakes import make_flow_dataset

    out = tmp_path_factory.mktemp("report") / "run"
    run_loso(tiny_cfg(seeds=(0, 1), fold_batch=4), make_flow_dataset(), out, progress=False)
    return out


def test_report_page_is_self_contained_with_every_figure(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 5  # confusion, per dataset, seeds, curves, per subject
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    assert "protocol: honest" in page and "evaluation: CDE" in page and "±" in page  # two seeds: mean ± std
    for name in ("confusion", "per_dataset", "seeds", "training_curves", "per_subject"):
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 1000
    assert "config.yaml" not in page or "train:" in page  # the configuration is shown
    assert "OPTIMISTIC" not in page
    assert "<th>UF1 95% CI</th>" in page and "subject bootstrap" in page  # each score's interval


def test_training_curves_are_kept_per_fold_and_epoch(run_dir: Path) -> None:
    curves = pd.read_csv(run_dir / "curves.csv")
    folds = list((run_dir / "folds").rglob("*.json"))
    assert curves.groupby(["seed", "subject"]).ngroups == len(folds) == 12
    assert sorted(curves["epoch"].unique()) == [0, 1, 2]
    assert curves["loss"].gt(0).all() and curves["acc"].between(0, 1).all()
    rec = json.loads(folds[0].read_text())
    assert len(rec["curve"]["loss"]) == len(rec["curve"]["acc"]) == 3


def test_loop_and_batched_curves_agree(tmp_path) -> None:
    """The one-at-a-time loop records the same training curve as batched training (no dropout)."""
    from fakes import make_flow_dataset

    cfg = replace(tiny_cfg(folds=("casme2/sub01", "samm/006")),
                  model=ModelConfig(name="ststnet", args={"dropout": 0.0}))
    a = run_loso(replace(cfg, eval=replace(cfg.eval, fold_batch=1)), make_flow_dataset(), tmp_path / "a",
                 progress=False)
    b = run_loso(replace(cfg, eval=replace(cfg.eval, fold_batch=4)), make_flow_dataset(), tmp_path / "b",
                 progress=False)
    assert a["fold_batch"] == 1 and b["fold_batch"] == 4
    ca, cb = pd.read_csv(tmp_path / "a" / "curves.csv"), pd.read_csv(tmp_path / "b" / "curves.csv")
    order = ["subject", "epoch"]
    np.testing.assert_allclose(ca.sort_values(order)["loss"], cb.sort_values(order)["loss"], rtol=1e-3)


def test_oracle_run_is_marked_optimistic(tmp_path) -> None:
    from fakes import make_flow_dataset

    cfg = tiny_cfg(folds=("casme2/sub01",), oracle_epoch=True)
    run_loso(cfg, make_flow_dataset(), tmp_path / "run", progress=False)
    assert "OPTIMISTIC" in (tmp_path / "run" / "report.html").read_text()


def test_a_resumed_run_says_its_wall_time_left_out_the_resumed_folds(run_dir: Path, tmp_path) -> None:
    """Run again over finished folds, the run takes a second: the page says the folds were resumed, not timed."""
    from fakes import make_flow_dataset

    again = tmp_path / "run"
    shutil.copytree(run_dir, again)
    earlier = json.loads((again / "results.json").read_text())
    (again / "results.json").write_text(json.dumps({**earlier, "wall_seconds_total": 100.0}))  # a first run of 100 s
    (again / "invocations.json").unlink()  # as a directory from round 18: its results.json has the earlier time
    r = run_loso(tiny_cfg(seeds=(0, 1), fold_batch=4), make_flow_dataset(), again, progress=False)
    assert r["resumed_folds"] == 12
    page = (again / "report.html").read_text()
    assert re.search(r"\(12 folds resumed from an earlier run, not timed here; 1\d\d over every invocation of the "
                     r"run\)", page)  # 100 s and this invocation's
    assert "resumed" not in (run_dir / "report.html").read_text()


def test_figures_of_the_whole_and_of_a_model_the_counter_cannot_trace() -> None:
    from epir.engine.tables import own_and_total_of as whole

    assert whole({"params": 99585, "params_total": 104634}, "params", "params_total") == "99,585 (all 104,634)"
    assert whole({"flops_per_sample": 780000, "flops_total": 780000}, "flops_per_sample", "flops_total") == "780,000"
    assert whole({"flops_per_sample": None}, "flops_per_sample", "flops_total") is None  # no figure, no crash


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_a_real_browser(run_dir: Path, tmp_path: Path) -> None:
    """Headless Chromium opens report.html from disk and draws it: the screenshot is not blank and holds colour
    (the figures), and no image failed to decode (Chromium draws a broken-image icon at a tiny size instead)."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium here: `apt-get install chromium` (Debian) to run the browser test")
    import cv2

    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (run_dir / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] >= 2000
    assert img.std() > 20  # not a blank page
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    assert (hsv[..., 1] > 80).mean() > 0.01  # coloured pixels: the figures were drawn


def test_tensorboard_curves(tmp_path) -> None:
    pytest.importorskip("tensorboard", reason="TensorBoard is optional: pip install tensorboard")
    from fakes import make_flow_dataset

    run_loso(tiny_cfg(folds=("casme2/sub01",), tensorboard=True), make_flow_dataset(), tmp_path / "run",
             progress=False)
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))

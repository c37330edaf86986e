"""Leave-one-subject-out engine: folds, honesty (no test data in training), protocol labels, resume, seeds."""
from __future__ import annotations

import inspect
import json
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import epir.engine.folds as folds
import epir.engine.loso as loso
import epir.engine.train
from epir.cli import main
from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig
from epir.engine.loso import run_fold, run_loso, select_subjects
from epir.engine.results import HONEST, ORACLE, format_summary
from epir.engine.train import InputNorm
from epir.errors import ConfigError
from epir.models import create_model, default_recipe
from fakes import make_flow_dataset, record_returns

ORACLE_TEXT = "oracle-epoch (optimistic)"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(epochs: int = 2, train: dict | None = None, **eval_kw) -> RunConfig:
    """STSTNet with its official recipe cut to ``epochs`` epochs, one thread (a fraction of a second per LOSO)."""
    eval_kw.setdefault("threads", 1)
    eval_kw.setdefault("fold_batch", 1)  # the one-at-a-time loop (tests/test_batched.py covers batching)
    return RunConfig(
        model=ModelConfig(name="ststnet"),
        data=DataConfig(dataset="megc2019"),
        train=replace(default_recipe("ststnet"), epochs=epochs, **(train or {})),
        eval=EvalConfig(**eval_kw),
    )


# --------------------------------------------------------------------------------------------- folds


class TestSelectSubjects:
    def test_every_subject_once_in_order_of_appearance(self, fake_dataset) -> None:
        subjects = select_subjects(fake_dataset, ())
        assert subjects == fake_dataset.subject_list()
        assert len(subjects) == len(set(subjects)) == 6
        assert set(subjects) == set(fake_dataset.subjects)

    def test_bare_ids_resolve_when_unambiguous(self, fake_dataset) -> None:
        chosen = select_subjects(fake_dataset, ["sub01", "smic/s02", "006"])
        assert chosen == ["casme2/sub01", "smic/s02", "samm/006"]

    def test_duplicates_collapse(self, fake_dataset) -> None:
        assert select_subjects(fake_dataset, ["sub01", "casme2/sub01"]) == ["casme2/sub01"]

    def test_ambiguous_bare_id_is_an_error(self) -> None:
        ds = make_flow_dataset({"casme2/s01": [0, 1], "smic/s01": [2, 0], "smic/s02": [1, 2]})
        with pytest.raises(ConfigError, match="ambiguous: casme2/s01, smic/s01"):
            select_subjects(ds, ["s01"])
        assert select_subjects(ds, ["smic/s01"]) == ["smic/s01"]

    def test_unknown_subject_did_you_mean(self, fake_dataset) -> None:
        with pytest.raises(ConfigError, match=r"(?i)no subject 'samm/06'.*did you mean 'samm/006'"):
            select_subjects(fake_dataset, ["samm/06"])

    def test_unknown_subject_never_silently_dropped(self, fake_dataset) -> None:
        with pytest.raises(ConfigError, match="'nobody'"):
            select_subjects(fake_dataset, ["sub01", "nobody"])

    def test_bare_id_typo_did_you_mean(self, fake_dataset) -> None:
        with pytest.raises(ConfigError, match=r"(?i)did you mean"):
            select_subjects(fake_dataset, ["sub0l"])


@pytest.fixture
def spy_fit(monkeypatch):
    """Wrap ``epir.engine.folds.fit``: record (x, y, kwargs, returned InputNorm) of every call."""
    calls: list[dict] = []
    real_fit = folds.fit

    def fit(model, x, y, cfg, **kwargs):
        norm = real_fit(model, x, y, cfg, **kwargs)
        calls.append({"x": x.clone(), "y": y.clone(), "kwargs": kwargs, "norm": norm})
        return norm

    monkeypatch.setattr(folds, "fit", fit)
    return calls


@pytest.fixture
def spy_run_fold(monkeypatch):
    """Wrap ``epir.engine.folds.run_fold``: record every fold record it returns."""
    records: list[dict] = []
    monkeypatch.setattr(folds, "run_fold", record_returns(folds.run_fold, records))
    return records


def test_folds_partition_the_samples_and_fit_gets_exactly_the_training_rows(
    fake_dataset, spy_fit, spy_run_fold
) -> None:
    ds = fake_dataset
    run_loso(tiny_cfg(), ds, progress=False)
    subjects = np.asarray(ds.subjects)
    assert [r["subject"] for r in spy_run_fold] == ds.subject_list()
    assert len(spy_fit) == len(spy_run_fold) == 6
    all_test = []
    for rec, call in zip(spy_run_fold, spy_fit):
        s = rec["subject"]
        test_idx = np.asarray(rec["indices"])
        train_idx = np.flatnonzero(subjects != s)
        # test = exactly the held-out subject's samples; train = everything else
        assert set(subjects[test_idx]) == {s}
        assert sorted(test_idx.tolist()) == np.flatnonzero(subjects == s).tolist()
        assert not set(test_idx.tolist()) & set(train_idx.tolist())
        assert len(test_idx) + len(train_idx) == len(ds)
        assert rec["n_train"] == len(train_idx)
        assert rec["true"] == ds.y[test_idx].tolist()
        # fit saw precisely the training rows, in dataset order, and nothing else
        assert torch.equal(call["x"], ds.x[torch.from_numpy(train_idx)])
        assert torch.equal(call["y"], ds.y[torch.from_numpy(train_idx)])
        assert set(call["kwargs"]) <= {"seed", "num_classes", "device", "on_epoch", "describe", "teacher", "history"}
        assert call["kwargs"].get("teacher") is None
        test_rows = ds.x[torch.from_numpy(test_idx)].flatten(1)
        assert not (call["x"].flatten(1)[:, None, :] == test_rows[None, :, :]).all(-1).any()
        all_test += test_idx.tolist()
    assert sorted(all_test) == list(range(len(ds)))  # every sample tested exactly once


def test_fit_signature_has_no_test_data() -> None:
    params = list(inspect.signature(epir.engine.train.fit).parameters)
    assert params == ["model", "x", "y", "cfg", "seed", "num_classes", "device", "on_epoch", "describe", "teacher",
                      "history"]
    assert not [p for p in params if any(w in p.lower() for w in ("test", "val", "held"))]


def test_honest_fold_ignores_the_held_out_labels(fake_dataset) -> None:
    """Honest protocol: the held-out subject's labels cannot influence its own predictions."""
    cfg = tiny_cfg(epochs=3)
    subject = "samm/007"
    a = run_fold(fake_dataset, cfg, subject, seed=0)
    changed = make_flow_dataset()
    mask = torch.tensor([s == subject for s in changed.subjects])
    changed.y[mask] = (changed.y[mask] + 1) % 3
    b = run_fold(changed, cfg, subject, seed=0)
    assert a["probs"] == b["probs"] and a["epoch"] == b["epoch"] == 2
    assert a["true"] != b["true"]


def test_standardize_statistics_come_from_training_subjects_only(fake_dataset, spy_fit) -> None:
    ds = fake_dataset
    held = "smic/s02"
    mask = torch.tensor([s == held for s in ds.subjects])
    ds.x[mask] = 255.0  # wildly different from everyone else
    run_loso(tiny_cfg(train={"input_norm": "standardize"}, folds=(held,)), ds, progress=False)
    (call,) = spy_fit
    norm: InputNorm = call["norm"]
    train_x = ds.x[~mask]
    assert torch.allclose(norm.mean.flatten(), train_x.mean(dim=(0, 2, 3)))
    assert torch.allclose(norm.std.flatten(), train_x.std(dim=(0, 2, 3)))
    assert not torch.allclose(norm.mean.flatten(), ds.x.mean(dim=(0, 2, 3)), atol=1.0)
    assert (norm.mean.flatten() < 200).all()


def test_fold_weights_standardize_statistics_from_training_subjects_only(
    fake_dataset, tmp_path, monkeypatch
) -> None:
    ds = fake_dataset
    held = "casme2/sub02"
    mask = torch.tensor([s == held for s in ds.subjects])
    ds.x[mask] = 255.0
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(create_model("ststnet").state_dict(), weights / "sub02.pth")
    seen: list[torch.Tensor] = []

    class SpyNorm(InputNorm):
        @classmethod
        def fit(cls, kind, x):
            seen.append(x.clone())
            return InputNorm.fit(kind, x)

    monkeypatch.setattr(folds, "InputNorm", SpyNorm)
    res = run_loso(
        tiny_cfg(train={"input_norm": "standardize"}, folds=("sub02",)), ds, fold_weights=weights, progress=False
    )
    assert res["protocol"].startswith("fold-weights")
    (x,) = seen
    assert torch.equal(x, ds.x[~mask])


# ----------------------------------------------------------------------------------------- protocol


def test_honest_is_the_default() -> None:
    assert RunConfig().eval.oracle_epoch is False
    assert EvalConfig().oracle_epoch is False
    assert HONEST == "honest"


def test_honest_run_is_labelled_honest(fake_dataset, tmp_path) -> None:
    res = run_loso(tiny_cfg(), fake_dataset, tmp_path / "run", progress=False)
    assert res["protocol"] == "honest"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["protocol"] == "honest"
    assert "optimistic" not in (tmp_path / "run" / "megc_log.txt").read_text()
    assert "optimistic" not in format_summary(res)


def test_oracle_epoch_is_labelled_everywhere(fake_root, tmp_path, capsys) -> None:
    assert ORACLE == ORACLE_TEXT
    out = tmp_path / "oracle"
    code = main(["loso", "--model", "ststnet", "--dataset", "megc2019", "--root", str(fake_root),
                 "--epochs", "3", "--oracle-epoch", "--threads", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert ORACLE_TEXT in printed
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == ORACLE_TEXT
    assert ORACLE_TEXT in (out / "results.json").read_text()
    assert ORACLE_TEXT in (out / "megc_log.txt").read_text()
    preds = pd.read_csv(out / "predictions.csv")
    assert preds["epoch"].between(0, 2).all()


def test_oracle_epoch_is_never_worse_per_subject(fake_dataset) -> None:
    """Same seed, same training trajectory: the oracle's per-subject accuracy is >= the last epoch's."""
    honest = run_loso(tiny_cfg(epochs=4), fake_dataset, progress=False)
    oracle = run_loso(tiny_cfg(epochs=4, oracle_epoch=True), fake_dataset, progress=False)
    assert honest["protocol"] == HONEST and oracle["protocol"] == ORACLE
    h = {r["subject"]: r["accuracy"] for r in honest["per_subject"]}
    o = {r["subject"]: r["accuracy"] for r in oracle["per_subject"]}
    assert h.keys() == o.keys()
    assert all(o[s] >= h[s] for s in h)


# ------------------------------------------------------------------------------------------- resume


def test_resume_after_interrupt_matches_an_uninterrupted_run(fake_dataset, tmp_path, monkeypatch) -> None:
    cfg = tiny_cfg()
    ref = run_loso(cfg, fake_dataset, tmp_path / "ref", progress=False)

    real_run_fold = folds.run_fold
    calls: list[str] = []

    def interrupted(dataset, cfg, subject, seed, **kwargs):
        calls.append(subject)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_fold(dataset, cfg, subject, seed, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(folds, "run_fold", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_loso(cfg, fake_dataset, out, progress=False)
    assert (out / "config.yaml").is_file()
    assert not (out / "results.json").exists()
    assert len(list((out / "folds" / "seed0").glob("*.json"))) == 2
    assert not list((out / "folds").rglob("*.tmp"))

    calls.clear()

    def counting(dataset, cfg, subject, seed, **kwargs):
        calls.append(subject)
        return real_run_fold(dataset, cfg, subject, seed, **kwargs)

    monkeypatch.setattr(folds, "run_fold", counting)
    res = run_loso(cfg, fake_dataset, out, progress=False)
    assert calls == fake_dataset.subject_list()[2:]  # only the 4 remaining folds were computed
    assert res["resumed_folds"] == 2
    assert (out / "predictions.csv").read_text() == (tmp_path / "ref" / "predictions.csv").read_text()
    assert (out / "megc_log.txt").read_text() == (tmp_path / "ref" / "megc_log.txt").read_text()
    assert (res["uf1"], res["uar"]) == (ref["uf1"], ref["uar"])

    # A finished run started again computes nothing.
    calls.clear()
    again = run_loso(cfg, fake_dataset, out, progress=False)
    assert calls == [] and again["resumed_folds"] == 6


def test_resume_with_a_different_config_is_refused(fake_dataset, tmp_path) -> None:
    out = tmp_path / "run"
    run_loso(tiny_cfg(folds=("sub01",)), fake_dataset, out, progress=False)
    changed = tiny_cfg(train={"lr": 0.01}, folds=("sub01",))
    with pytest.raises(ConfigError, match=r"different configuration.*train\.lr"):
        run_loso(changed, fake_dataset, out, progress=False)
    with pytest.raises(ConfigError, match=r"model\.bgr_input"):
        run_loso(replace(changed, train=tiny_cfg().train, model=ModelConfig("ststnet", {"bgr_input": False})),
                 fake_dataset, out, progress=False)


def test_resume_may_add_seeds_and_folds(fake_dataset, tmp_path, spy_run_fold) -> None:
    out = tmp_path / "run"
    run_loso(tiny_cfg(folds=("sub01", "006")), fake_dataset, out, progress=False)
    assert len(spy_run_fold) == 2
    res = run_loso(tiny_cfg(seeds=(0, 1)), fake_dataset, out, progress=False)
    assert len(spy_run_fold) == 2 + 4 + 6
    assert res["resumed_folds"] == 2


# -------------------------------------------------------------------------------- seeds, determinism


def test_several_seeds(fake_dataset, tmp_path) -> None:
    out = tmp_path / "run"
    res = run_loso(tiny_cfg(seeds=(0, 1)), fake_dataset, out, progress=False)
    assert res["seeds"] == [0, 1]
    assert len(res["per_seed"]) == 2
    assert [s["seed"] for s in res["per_seed"]] == [0, 1]
    for key in ("uf1_std", "uar_std", "accuracy_std"):
        assert key in res and res[key] >= 0
    assert res["uf1"] == pytest.approx(np.mean([s["uf1"] for s in res["per_seed"]]))
    assert res["uf1_std"] == pytest.approx(np.std([s["uf1"] for s in res["per_seed"]], ddof=1))
    assert res["n"] == len(fake_dataset)
    for entry in res["per_dataset"].values():
        assert "uf1_std" in entry and "uar_std" in entry
    assert (out / "megc_log_seed0.txt").is_file() and (out / "megc_log_seed1.txt").is_file()
    assert (out / "megc_log.txt").read_text() == (out / "megc_log_seed0.txt").read_text()
    preds = pd.read_csv(out / "predictions.csv")
    assert Counter(preds["seed"]) == {0: len(fake_dataset), 1: len(fake_dataset)}


def test_same_seed_same_predictions(fake_dataset, tmp_path) -> None:
    cfg = tiny_cfg(epochs=3, train={"shuffle": True, "batch_size": 8})
    run_loso(cfg, fake_dataset, tmp_path / "a", progress=False)
    run_loso(cfg, make_flow_dataset(), tmp_path / "b", progress=False)
    a = (tmp_path / "a" / "predictions.csv").read_text()
    b = (tmp_path / "b" / "predictions.csv").read_text()
    assert a == b


def test_different_seeds_differ(fake_dataset) -> None:
    a = run_fold(fake_dataset, tiny_cfg(), "casme2/sub01", seed=0)
    b = run_fold(fake_dataset, tiny_cfg(), "casme2/sub01", seed=1)
    c = run_fold(fake_dataset, tiny_cfg(), "casme2/sub01", seed=0)
    assert a["probs"] == c["probs"]
    assert a["probs"] != b["probs"]


def test_fold_seed_depends_only_on_seed_and_subject() -> None:
    assert loso.fold_seed(0, "casme2/sub01") == loso.fold_seed(0, "casme2/sub01")
    assert loso.fold_seed(0, "casme2/sub01") != loso.fold_seed(1, "casme2/sub01")
    assert loso.fold_seed(0, "casme2/sub01") != loso.fold_seed(0, "casme2/sub02")
    assert 0 <= loso.fold_seed(10**9, "x") < 2**31 - 1


# ------------------------------------------------------------- a share of the training subjects (learning curves)


def test_a_share_of_the_training_subjects_is_drawn_nested_and_seeded(fake_dataset) -> None:
    ds = fake_dataset
    for subject in ds.subject_list():
        others = sorted(set(ds.subjects) - {subject})
        assert folds.training_subjects(ds, subject) == others  # 1: every other subject
        draws = {f: folds.training_subjects(ds, subject, f, seed=3) for f in (0.01, 0.4, 0.6, 0.99, 1.0)}
        assert [len(d) for d in draws.values()] == [1, 2, 3, 5, 5]  # max(1, round(f * 5))
        assert all(subject not in d and set(d) <= set(others) for d in draws.values())
        assert set(draws[0.01]) <= set(draws[0.4]) <= set(draws[0.6]) <= set(draws[0.99])  # nested
        assert draws[0.6] == folds.training_subjects(ds, subject, 0.6, seed=3)  # seeded
    assert any(folds.training_subjects(ds, s, 0.4, seed=0) != folds.training_subjects(ds, s, 0.4, seed=1)
               for s in ds.subject_list())


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_a_fold_trains_on_its_drawn_subjects_rows_alone(fake_dataset, tmp_path, monkeypatch, fold_batch) -> None:
    """train.subject_fraction: spy on every training, one at a time and batched: a fold's model learns from the
    rows of its drawn subjects exactly, never the held-out subject's; the fold file names them, results.json says
    the share, and the summary says it is a learning-curve point."""
    from fakes import spy_on_selection_training

    ds = fake_dataset
    trained = spy_on_selection_training(monkeypatch)  # the batched path trains through epir.engine.selection
    real_fit = folds.fit
    monkeypatch.setattr(folds, "fit", lambda model, x, y, cfg, **kw: (trained.append(x.clone()),
                                                                        real_fit(model, x, y, cfg, **kw))[1])
    out = tmp_path / "run"
    r = run_loso(tiny_cfg(train={"subject_fraction": 0.5}, fold_batch=fold_batch), ds, out, progress=False)
    subjects = np.asarray(ds.subjects)
    records = {json.loads(p.read_text())["subject"]: json.loads(p.read_text()) for p in out.glob("folds/seed0/*")}
    assert sorted(records) == sorted(ds.subject_list()) and len(trained) == 6
    for x in trained:  # each training set is one fold's drawn subjects' rows, in the dataset's order
        rec = next(rec for s, rec in records.items()
                   if torch.equal(x, ds.x[torch.from_numpy(np.flatnonzero(np.isin(subjects, rec["train_subjects"])))]))
        assert rec["train_subjects"] == folds.training_subjects(ds, rec["subject"], 0.5, seed=0)
        assert len(rec["train_subjects"]) == 3 and rec["subject"] not in rec["train_subjects"]
        assert rec["n_train"] == len(x)
        held_out = ds.x[torch.from_numpy(np.flatnonzero(subjects == rec["subject"]))].flatten(1)
        assert not (x.flatten(1)[:, None, :] == held_out[None, :, :]).all(-1).any()
    assert r["subject_fraction"] == {"fraction": 0.5, "train_subjects_mean": 3.0, "of": 5}
    assert "a share of 0.5 of each fold's, 3.0 of 5 on average" in format_summary(r)
    assert "subject_fraction" not in run_loso(tiny_cfg(folds=("casme2/sub01",)), ds, progress=False)


def test_inner_selection_and_the_teacher_see_only_the_drawn_subjects(fake_dataset, monkeypatch) -> None:
    from fakes import spy_on_selection_training

    ds = fake_dataset
    trained = spy_on_selection_training(monkeypatch)
    subject = ds.subject_list()[2]
    cfg = tiny_cfg(train={"subject_fraction": 0.4, "select": ("", "train.epochs=1"), "select_k": 2,
                          "distill": "ststnet", "distill_weight": 0.0, "distill_mix": 0.5,
                          "distill_overrides": ("train.epochs=1",)}, folds=(subject,))
    run_loso(cfg, ds, progress=False)
    drawn = folds.training_subjects(ds, subject, 0.4, seed=0)
    allowed = ds.x[torch.from_numpy(np.flatnonzero(np.isin(np.asarray(ds.subjects), drawn)))].flatten(1)
    assert trained
    for x in trained:
        assert (x.flatten(1)[:, None, :] == allowed[None, :, :]).all(-1).any(1).all(), "a row of another subject"


@pytest.mark.parametrize("train, message", [
    ({"subject_fraction": 0.0}, r"train.subject_fraction=0.0: expected a share in \(0, 1\]"),
    ({"subject_fraction": 1.5}, r"train.subject_fraction=1.5: expected a share in \(0, 1\]"),
    ({"subject_fraction": 0.5, "select": ("",), "select_shared": 3},
     "1 while train.select_shared > 0 .* set train.select_shared=0"),
    ({"select": ("train.subject_fraction=0.5",)}, "'train.subject_fraction' cannot vary inside the fold"),
    ({"distill": "ststnet", "distill_overrides": ("train.subject_fraction=0.5",)},
     "train.distill_overrides may not set train.subject_fraction"),
])
def test_bad_subject_fractions_are_one_line_errors(fake_dataset, train: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        run_loso(tiny_cfg(train=train), fake_dataset, progress=False)
    assert "\n" not in str(e.value)


def test_fold_file_layout(tmp_path: Path) -> None:
    assert loso.fold_file(tmp_path, 3, "casme2/sub01") == tmp_path / "folds" / "seed3" / "casme2__sub01.json"


def test_the_benchmark_judges_no_target_for_an_oracle_run(fake_dataset) -> None:
    """benchmarks/real_loso.py printed 'met: UF1 >= 0.74 and UAR >= 0.74' for an --oracle-epoch run."""
    import importlib.util
    from pathlib import Path

    from epir.engine.results import LosoResults

    spec = importlib.util.spec_from_file_location(
        "real_loso", Path(__file__).resolve().parents[1] / "benchmarks" / "real_loso.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    oracle = LosoResults.from_json(run_loso(tiny_cfg(epochs=2, oracle_epoch=True), fake_dataset, progress=False))
    table = bench.beside_table("epir", oracle, None)
    assert "targets not judged: this run's protocol is oracle-epoch (optimistic)" in table
    assert "met:" not in table and "MISSED:" not in table
    honest = LosoResults.from_json(run_loso(tiny_cfg(epochs=2), fake_dataset, progress=False))
    assert "UF1 >= 0.74 and UAR >= 0.74" in bench.beside_table("epir", honest, None)  # judged, met or missed


def test_the_wall_time_of_every_invocation_is_kept(fake_dataset, tmp_path) -> None:
    """A run started again over finished folds takes a second; results.json keeps that invocation's wall_seconds and
    the sum over every invocation (wall_seconds_total), so the first invocation's time is not lost."""
    out = tmp_path / "run"
    cfg = tiny_cfg(folds=("sub01", "006"))
    first = run_loso(cfg, fake_dataset, out, progress=False)
    written = json.loads((out / "results.json").read_text())
    assert written["wall_seconds_total"] == first["wall_seconds"]
    again = run_loso(cfg, fake_dataset, out, progress=False)
    written = json.loads((out / "results.json").read_text())
    assert again["resumed_folds"] == 2 and written["wall_seconds"] == again["wall_seconds"]
    assert written["wall_seconds_total"] == pytest.approx(first["wall_seconds"] + again["wall_seconds"])
    from epir.engine.records import LosoResults

    assert LosoResults.load(out).wall_seconds_total == written["wall_seconds_total"]


@pytest.mark.parametrize(("earlier", "expected"), [
    (None, 0.0),  # no results.json yet
    ({"wall_seconds": 12.0, "resumed_folds": 0, "wall_seconds_total": 30.0}, 30.0),
    ({"wall_seconds": 12.0, "resumed_folds": 0}, 12.0),  # written before round 18, all of the run timed
    ({"wall_seconds": 1.5, "resumed_folds": 68}, None),  # written before round 18, its first invocation unknown
    ("{not json", None),
    ({"wall_seconds_total": float("nan")}, None),
])
def test_the_earlier_invocations_wall_time_or_none_where_a_sum_would_be_wrong(tmp_path, earlier, expected) -> None:
    from epir.engine.runstore import earlier_wall_seconds

    if earlier is not None:
        text = earlier if isinstance(earlier, str) else json.dumps(earlier)
        (tmp_path / "results.json").write_text(text)
    assert earlier_wall_seconds(tmp_path) == expected


def test_a_stopped_invocation_counts_in_the_total(fake_dataset, tmp_path, monkeypatch) -> None:
    """Ctrl+C after a fold: invocations.json keeps that invocation's time and folds (ended: stopped), and the run
    resumed later sums it with its own in wall_seconds_total."""
    from epir.engine import folds
    from fakes import interrupt_on_call

    out = tmp_path / "run"
    cfg = tiny_cfg(folds=("sub01", "006", "s01"))
    real = folds.run_fold
    monkeypatch.setattr(folds, "run_fold", interrupt_on_call(real, 2))
    with pytest.raises(KeyboardInterrupt):
        run_loso(cfg, fake_dataset, out, progress=False)
    (stopped,) = json.loads((out / "invocations.json").read_text())["invocations"]
    assert stopped["ended"] == "stopped" and stopped["folds"] == 1 and stopped["seconds"] > 0
    assert not (out / "results.json").exists()
    monkeypatch.setattr(folds, "run_fold", real)
    again = run_loso(cfg, fake_dataset, out, progress=False)
    record = json.loads((out / "invocations.json").read_text())
    assert record["before"] == 0.0 and [e["ended"] for e in record["invocations"]] == ["stopped", "finished"]
    assert record["invocations"][1] == {**record["invocations"][1], "folds": 2, "seconds": again["wall_seconds"]}
    written = json.loads((out / "results.json").read_text())
    assert written["wall_seconds_total"] == pytest.approx(stopped["seconds"] + again["wall_seconds"])


@pytest.mark.parametrize(("before", "expected"), [
    ({"results.json": {"wall_seconds": 1.5, "resumed_folds": 0, "wall_seconds_total": 40.0}}, 40.0),  # round 18
    ("folds only", None),  # a finished fold from an invocation that left no record of its time
    ({"invocations.json": "{damaged"}, None),
    ({"invocations.json": '{"before": 0, "invocations": [{"seconds": -5}]}'}, None),  # not a time
    ({"invocations.json": '{"before": "soon", "invocations": []}'}, None),
])
def test_a_run_directory_from_before_the_record(fake_dataset, tmp_path, before, expected) -> None:
    """A directory without invocations.json starts it from its results.json (a round-18 run's total); fold files
    with neither, or a damaged record, leave the total out rather than give a sum that misses time."""
    out = tmp_path / "run"
    cfg = tiny_cfg(folds=("sub01",))
    if before == "folds only":
        run_loso(cfg, fake_dataset, out, progress=False)
        (out / "results.json").unlink()
        (out / "invocations.json").unlink()
        before = {}
    for name, content in before.items():
        out.mkdir(exist_ok=True)
        (out / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_loso(cfg, fake_dataset, out, progress=False)
    written = json.loads((out / "results.json").read_text())
    if expected is None:
        assert "wall_seconds_total" not in written
    else:
        assert written["wall_seconds_total"] == pytest.approx(expected + res["wall_seconds"])
    record = json.loads((out / "invocations.json").read_text())
    assert record["before"] == expected and len(record["invocations"]) == 1
    damaged = [str(w.message) for w in caught if "invocations.json cannot be read" in str(w.message)]
    assert bool(damaged) == ("invocations.json" in before)


def test_the_backend_gives_back_the_thread_count_it_found(fake_dataset) -> None:
    """``eval.threads`` holds for the folds only: this process's torch thread count is as before once the folds'
    iteration ends, and also when it is abandoned after the first fold (a caller that stops early)."""
    from epir.engine.backends import execute

    cfg = tiny_cfg(epochs=1, threads=2)
    groups = [[(0, s)] for s in fake_dataset.subject_list()[:2]]
    torch.set_num_threads(1)  # the fixture's count; the folds run on eval.threads=2
    assert len(list(execute(fake_dataset, cfg, groups))) == 2 and torch.get_num_threads() == 1
    records = execute(fake_dataset, cfg, groups)
    next(records)
    assert torch.get_num_threads() == 2
    records.close()
    assert torch.get_num_threads() == 1

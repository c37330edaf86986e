"""The Dask backend (issue 7): a local cluster of 2 worker processes gives the local backend's results."""
from __future__ import annotations

import json

import pytest

from epir.cli import main
from epir.engine.loso import make_config, run_loso
from epir.errors import ConfigError

distributed = pytest.importorskip("distributed")

# One torch thread everywhere: workers of every backend train with one thread, and a different thread count
# may change the last float digits of a reduction.
TINY = ["model.dim=12", "model.heads=2", "model.projection_dim=8", "train.epochs=2", "train.batch_size=8",
        "eval.threads=1"]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as c:
        yield c


def test_dask_cluster_gives_the_local_results(fake_dataset, tmp_path, cluster) -> None:
    """The default recipe (its teacher and the choices made on shared groups before the folds) on Dask workers
    gives what it gives locally."""
    cheap_teacher = [*TINY, "train.distill_overrides=[train.epochs=1]"]
    cfg = make_config("epir", overrides=cheap_teacher)
    local = run_loso(cfg, fake_dataset, tmp_path / "local", progress=False)
    assert local["selection"]["select_shared"] == 6
    dask_cfg = make_config("epir", overrides=[*cheap_teacher, f"eval.dask_scheduler={cluster.scheduler_address}"])
    on_dask = run_loso(dask_cfg, fake_dataset, tmp_path / "dask", progress=False)
    assert on_dask["per_seed"] == local["per_seed"]
    for f in (tmp_path / "local" / "folds" / "seed0").glob("*.json"):
        a, b = json.loads(f.read_text()), json.loads((tmp_path / "dask" / "folds" / "seed0" / f.name).read_text())
        assert a["probs"] == b["probs"]


def test_dask_run_resumes_and_only_runs_missing_folds(fake_dataset, tmp_path, cluster) -> None:
    cfg = make_config("epir", recipe="alone", overrides=[*TINY, f"eval.dask_scheduler={cluster.scheduler_address}"])
    run_loso(cfg, fake_dataset, tmp_path / "run", progress=False)
    first = tmp_path / "run" / "folds" / "seed0" / "casme2__sub01.json"
    first.unlink()  # as if the worker running this fold had died with the client
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.parent.glob("*.json")}
    r = run_loso(cfg, fake_dataset, tmp_path / "run", progress=False)
    assert r["resumed_folds"] == 5 and first.exists()
    assert {p.name: p.stat().st_mtime_ns for p in first.parent.glob("*.json") if p.name != first.name} == mtimes


def test_cli_flag_and_bad_address(fake_root, tmp_path, capsys, monkeypatch) -> None:
    def refuse(address, **kwargs):  # what Client does after its connection timeout, without the wait
        raise OSError(f"Timed out trying to connect to {address}")

    monkeypatch.setattr(distributed, "Client", refuse)
    code = main(["loso", "--model", "ststnet", "--dataset", "megc2019", "--root", str(fake_root), "--epochs", "1",
                 "--dask-scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    assert "cannot connect" in capsys.readouterr().err


def test_missing_distributed_is_a_clear_error(fake_dataset, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_distributed(name, *a, **k):
        if name == "distributed":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    cfg = make_config("ststnet", overrides=["train.epochs=1", "eval.dask_scheduler=tcp://127.0.0.1:9"])
    with pytest.raises(ConfigError, match=r"pip install 'epir\[dask\]'"):
        run_loso(cfg, fake_dataset, progress=False)

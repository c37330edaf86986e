"""epir pretrain and train.init: weights from the synthetic generator, loaded by every fold and member."""
from __future__ import annotations

import json

import pytest
import torch

import epir.engine.batched as batched
import epir.engine.train as train
from epir.engine.loso import make_config, run_loso
from epir.engine.pretrain import pretrain, synthetic_corpus
from epir.errors import ConfigError
from epir.models import create_model


def test_pretrain_writes_weights_that_fit_the_model(tmp_path):
    path = pretrain("epir", tmp_path / "pre", subjects=2, clips=4, epochs=1, cache_dir=tmp_path / "cache", jobs=1,
                    progress=False)
    assert path.suffix == ".safetensors" and path.is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["data"]["samples"] == 8 and meta["model"]["name"] == "epir"
    model = create_model("epir")
    train.load_initial_weights(model, path)
    saved = train.load_safetensors(str(path))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    # the generated set is cached and read back identically
    x1, y1, cache = synthetic_corpus(2, 4, cache_dir=tmp_path / "cache", jobs=1)
    x2, y2, _ = synthetic_corpus(2, 4, cache_dir=tmp_path / "cache", jobs=1)
    assert cache is not None and cache.is_file() and torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ConfigError, match="does not fit this model"):
        train.load_initial_weights(create_model("epir", dim=32, heads=2), path)
    with pytest.raises(ConfigError, match="no such file"):
        train.load_initial_weights(model, tmp_path / "none.safetensors")


@pytest.mark.parametrize("fold_batch", [1, 2])
def test_every_fold_starts_from_train_init(tmp_path, fake_dataset, monkeypatch, fold_batch):
    path = pretrain("epir", tmp_path / "pre", subjects=2, clips=4, epochs=1, cache_dir=None, jobs=1, progress=False)
    calls: list[str] = []
    real = train.load_initial_weights

    def spy(model, file):
        calls.append(str(file))
        return real(model, file)

    monkeypatch.setattr(train, "load_initial_weights", spy)
    monkeypatch.setattr(batched, "load_initial_weights", spy)
    subjects = fake_dataset.subject_list()[:2]
    cfg = make_config("epir", seeds=(0,), folds=subjects, recipe="alone",
                      overrides=["train.epochs=1", f"train.init={path}", "eval.jobs=1",
                                 f"eval.fold_batch={fold_batch}"])
    run_loso(cfg, fake_dataset, progress=False)
    assert calls.count(str(path)) == len(subjects)  # one load per fold (the engine's own check is not spied)
    with pytest.raises(ConfigError, match="train.init=.*no such file"):
        run_loso(make_config("epir", overrides=["train.init=nowhere.safetensors"]), fake_dataset, progress=False)

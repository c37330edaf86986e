"""Checkpoints (issue 6): `epir train` writes a self-contained checkpoint; loading gives the same outputs and
rejects tampered or mismatched files with a clear error; nothing is unpickled."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import epir
from epir.cli import main
from epir.data import load_dataset
from epir.engine.train import InputNorm, mirror_mean_probabilities
from epir.errors import ConfigError
from epir.inference import Checkpoint, CheckpointError, CheckpointNotFoundError, load_checkpoint, train_checkpoint
from epir.inference.checkpoint import make_meta, save_checkpoint
from epir.models import create_model, resolve_model_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_EPIR = ["model.dim=16", "model.heads=2", "model.depths=[1,1]"]


@pytest.fixture(scope="module")
def tiny_data():
    return load_dataset("synthetic", n_subjects=3, clips_per_subject=4, seed=0)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Checkpoint:
    cfg = epir.make_config("epir", "synthetic", overrides=["train.epochs=2", *TINY_EPIR])
    return train_checkpoint(cfg, tmp_path_factory.mktemp("ckpt") / "epir", dataset=tiny_data, progress=False)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_train_writes_a_self_contained_checkpoint(trained: Checkpoint, tiny_data) -> None:
    d = trained.path
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "checkpoint.json", "config.yaml"}
    meta = json.loads((d / "checkpoint.json").read_text())
    assert meta["format_version"] == 1 and meta["epir_version"] == epir.__version__ and meta["created"]
    assert meta["model"]["name"] == "epir" and meta["model"]["args"]["dim"] == 16
    assert meta["class_names"] == ["negative", "positive", "surprise"]
    assert meta["input"]["channels"] == ["u", "v", "strain"] and meta["input"]["size"] == 28
    assert meta["input"]["range"] == [0, 255] and meta["input"]["transform"] == "none"
    assert meta["input"]["tta"] == epir.models.default_recipe("epir").tta  # the recipe's test-time augmentation
    assert meta["input"]["normalization"]["kind"] == "standardize"
    assert meta["preprocessing"]["flow_method"] == "tvl1" and meta["preprocessing"]["size"] == 28
    tr = meta["training"]
    assert tr["dataset"] == "synthetic" and tr["samples"] == 12 and len(tr["subjects"]) == 3
    assert tr["config"]["train"]["epochs"] == 2
    assert yaml.safe_load((d / "config.yaml").read_text())["model"]["dim"] == 16


def test_round_trip_gives_the_same_outputs(trained: Checkpoint, tiny_data) -> None:
    loaded = load_checkpoint(trained.path)
    x = tiny_data.x
    assert loaded.info.tta == epir.models.default_recipe("epir").tta
    with torch.inference_mode():
        model = trained.model.eval()
        if loaded.info.tta == "flip":  # the recipe's test-time flip: log of the mean of map's and mirror's probs
            before = mirror_mean_probabilities(lambda m: model(trained.norm(m)), x).log()
        else:  # the trained model with the normalisation fit() returned
            before = model(trained.norm(x))
        after = loaded.inference_model()(x)  # the loaded model takes 0-255 maps: normalisation inside
    torch.testing.assert_close(before, after)
    assert loaded.class_names == trained.class_names
    assert torch.equal(loaded.norm.mean, trained.norm.mean.float()) and torch.equal(loaded.norm.std, trained.norm.std)


@pytest.mark.parametrize("name, args", [("ststnet", {}), ("epir", {"dim": 16, "heads": 2, "dtsm": False})])
def test_round_trip_other_models_and_buffers(name: str, args: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, **args)
    x = torch.rand(6, 3, 28, 28) * 255
    model.train()
    model(InputNorm.fit("standardize", x)(x))  # moves STSTNet's BatchNorm running statistics (buffers)
    model.eval()
    norm = InputNorm.fit("standardize", x)
    meta = make_meta(model_name=name, model_args=resolve_model_args(name, args), class_names=("a", "b", "c"),
                     norm=norm, norm_kind="standardize", input_size=28)
    save_checkpoint(tmp_path / "ck", model, meta)
    loaded = load_checkpoint(tmp_path / "ck")
    with torch.inference_mode():
        assert torch.equal(model(norm(x)), loaded.inference_model()(x))


def test_loading_never_unpickles(trained: Checkpoint, monkeypatch) -> None:
    import pickle

    def refuse(*a, **k):
        raise AssertionError("a checkpoint load must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_checkpoint(trained.path)


def test_tampered_weights_are_a_clear_error(trained: Checkpoint, tmp_path: Path) -> None:
    d = copy_checkpoint(trained.path, tmp_path / "ck")
    blob = bytearray((d / "model.safetensors").read_bytes())
    blob[-3] ^= 0xFF  # one byte of a weight
    (d / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(d)
    (d / "model.safetensors").write_bytes(bytes(blob[:-10]))
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(d)


def test_weights_of_another_model_are_a_clear_error(trained: Checkpoint, tmp_path: Path) -> None:
    d = copy_checkpoint(trained.path, tmp_path / "ck")
    meta = json.loads((d / "checkpoint.json").read_text())
    meta["model"]["args"]["dim"] = 32
    (d / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not fit model 'epir'.*wrong shape"):
        load_checkpoint(d)
    meta["model"]["args"]["dim"] = 16
    meta["model"]["args"]["dtsm"] = False  # no DTSM scorer: the file has tensors the model lacks
    (d / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        load_checkpoint(d)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["model"].update(name="epirr"), "Unknown model 'epirr'. Did you mean 'epir'"),
    (lambda m: m["model"]["args"].update(depthz=3), "no argument 'depthz'"),
    (lambda m: m.update(format_version=99), "newer epir"),
    (lambda m: m.pop("class_names"), "missing key 'class_names'"),
    (lambda m: m["input"].update(channels=["v", "u", "strain"]), "input.channels"),
    (lambda m: m["input"]["normalization"].update(std=[1.0, 0.0, 1.0]), "std in \\[1e-6"),
    (lambda m: m.update(class_names=["a", "b"]), "num_classes is 3 but there are 2 class_names"),
    (lambda m: m["input"].update(tta="rotate"), "input.tta must be one of none, flip"),
])
def test_malformed_description_is_a_clear_error(trained: Checkpoint, tmp_path: Path, edit, message: str) -> None:
    d = copy_checkpoint(trained.path, tmp_path / "ck")
    meta = json.loads((d / "checkpoint.json").read_text())
    edit(meta)
    (d / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message) as exc:
        load_checkpoint(d)
    assert "checkpoint.json" in str(exc.value)


def test_missing_paths_are_clear_errors(trained: Checkpoint, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointNotFoundError, match="not an epir checkpoint"):
        load_checkpoint(tmp_path)
    d = copy_checkpoint(trained.path, tmp_path / "ck")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="model.safetensors is missing"):
        load_checkpoint(d)
    (d / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(d)


def test_train_refuses_to_overwrite(trained: Checkpoint, tiny_data) -> None:
    cfg = epir.make_config("epir", "synthetic", overrides=["train.epochs=1", *TINY_EPIR])
    with pytest.raises(epir.ConfigError, match="already holds a checkpoint"):
        train_checkpoint(cfg, trained.path, dataset=tiny_data, progress=False)


def test_train_follows_the_recipe_selection_and_teacher_on_every_row(tiny_data, tmp_path: Path, monkeypatch) -> None:
    """epir train runs the recipe as LOSO does, every row being a training row: train.select chooses on groups of
    all subjects, train.distill's teacher learns from all rows; ensembles and snapshots are refused."""
    from epir.inference import training

    seen: list[int] = []
    real = training.train_teachers

    def spy(dataset, cfg, folds, **kw):
        seen.extend(len(rows) for rows, _, _ in folds)
        return real(dataset, cfg, folds, **kw)

    monkeypatch.setattr(training, "train_teachers", spy)
    cfg = epir.make_config("epir", "synthetic", overrides=[
        "train.epochs=2", *TINY_EPIR, "train.distill=ststnet", "train.distill_overrides=[train.epochs=1]",
        "train.select=['', 'train.epochs=1']", "train.select_k=3"])
    ckpt = train_checkpoint(cfg, tmp_path / "ckpt", dataset=tiny_data, progress=False)
    tr = ckpt.meta["training"]
    assert tr["teacher"] == "ststnet" and seen[-1] == len(tiny_data)  # the final teacher saw every row
    chosen = tr["selection"]["chosen"]
    assert len(tr["selection"]["scores"]) == 2 and tr["config"]["train"]["epochs"] == [2, 1][chosen]
    assert tr["config"]["train"]["select"] == []  # the saved config is the candidate that was trained
    for key in ("train.ensemble=2", "train.snapshots=2"):
        bad = epir.make_config("epir", "synthetic", overrides=["train.epochs=4", *TINY_EPIR, key])
        with pytest.raises(ConfigError, match=f"{key}: a checkpoint holds one model's weights"):
            train_checkpoint(bad, tmp_path / key, dataset=tiny_data, progress=False)
    bad = epir.make_config("epir", "synthetic", overrides=["train.epochs=4", *TINY_EPIR, "train.distill=ststnet",
                                                         "train.distill_mix=0.5"])
    with pytest.raises(ConfigError, match="train.distill_mix=0.5: a checkpoint holds the student alone"):
        train_checkpoint(bad, tmp_path / "mix", dataset=tiny_data, progress=False)
    bad = epir.make_config("epir", "synthetic", recipe="teacher-mix-select", overrides=["train.epochs=4", *TINY_EPIR])
    with pytest.raises(ConfigError, match="a candidate mixes in the teacher"):
        train_checkpoint(bad, tmp_path / "mix-select", dataset=tiny_data, progress=False)


def test_cli_train_then_load(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ck"
    args = ["train", "--dataset", "synthetic", "--model", "ststnet", "--epochs", "1", "--threads", "1",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "checkpoint:" in capsys.readouterr().out
    ck = load_checkpoint(out)
    assert ck.model_name == "ststnet" and ck.meta["training"]["samples"] == 180
    assert main(args) == 2  # a second time: refuses to overwrite, no traceback
    err = capsys.readouterr().err
    assert "already holds a checkpoint" in err and "Traceback" not in err

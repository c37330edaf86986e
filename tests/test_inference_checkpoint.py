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
    cfg = epir.make_config("epir", "synthetic", recipe="alone", overrides=["train.epochs=2", *TINY_EPIR])
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
    assert meta["input"]["tta"] == epir.models.default_recipe("epir", "alone").tta  # the recipe's test-time flip
    assert meta["input"]["normalization"]["kind"] == "standardize"
    assert meta["preprocessing"]["flow_method"] == "tvl1" and meta["preprocessing"]["size"] == 28
    tr = meta["training"]
    assert tr["dataset"] == "synthetic" and tr["samples"] == 12 and len(tr["subjects"]) == 3
    assert tr["config"]["train"]["epochs"] == 2
    assert yaml.safe_load((d / "config.yaml").read_text())["model"]["dim"] == 16


def test_round_trip_gives_the_same_outputs(trained: Checkpoint, tiny_data) -> None:
    loaded = load_checkpoint(trained.path)
    x = tiny_data.x
    assert loaded.info.tta == epir.models.default_recipe("epir", "alone").tta
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
    assert_edit_is_a_clear_error(trained, tmp_path, edit, message)


def assert_edit_is_a_clear_error(ckpt: Checkpoint, tmp_path: Path, edit, message: str) -> None:
    """A copy of ``ckpt`` whose checkpoint.json ``edit`` changed fails to load with ``message``, naming the file."""
    d = copy_checkpoint(ckpt.path, tmp_path / "ck")
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
    cfg = epir.make_config("epir", "synthetic", recipe="alone", overrides=["train.epochs=1", *TINY_EPIR])
    with pytest.raises(epir.ConfigError, match="already holds a checkpoint"):
        train_checkpoint(cfg, trained.path, dataset=tiny_data, progress=False)


def test_train_follows_the_recipe_selection_and_teacher_on_every_row(tiny_data, tmp_path: Path, monkeypatch) -> None:
    """epir train runs the recipe as LOSO does, every row being a training row: train.select chooses on groups of
    all subjects, train.distill's teacher learns from all rows; ensembles, snapshots and a share of the subjects are
    refused."""
    from epir.inference import training

    seen: list[int] = []
    real = training.train_teachers

    def spy(dataset, cfg, folds, **kw):
        seen.extend(len(rows) for rows, _, _ in folds)
        return real(dataset, cfg, folds, **kw)

    monkeypatch.setattr(training, "train_teachers", spy)
    cfg = epir.make_config("epir", "synthetic", recipe="alone", overrides=[
        "train.epochs=2", *TINY_EPIR, "train.distill=ststnet", "train.distill_overrides=[train.epochs=1]",
        "train.select=['', 'train.epochs=1']", "train.select_k=3"])
    ckpt = train_checkpoint(cfg, tmp_path / "ckpt", dataset=tiny_data, progress=False)
    tr = ckpt.meta["training"]
    assert tr["teacher"] == "ststnet" and seen[-1] == len(tiny_data)  # the final teacher saw every row
    chosen = tr["selection"]["chosen"]
    assert len(tr["selection"]["scores"]) == 2 and tr["config"]["train"]["epochs"] == [2, 1][chosen]
    assert tr["config"]["train"]["select"] == []  # the saved config is the candidate that was trained
    for key in ("train.ensemble=2", "train.snapshots=2"):
        bad = epir.make_config("epir", "synthetic", recipe="alone", overrides=["train.epochs=4", *TINY_EPIR, key])
        with pytest.raises(ConfigError, match=f"{key}: a checkpoint holds one model's weights"):
            train_checkpoint(bad, tmp_path / key, dataset=tiny_data, progress=False)
    bad = epir.make_config("epir", "synthetic", recipe="alone", overrides=[
        "train.epochs=4", *TINY_EPIR, "train.ensemble=2", "train.member_overrides=['', 'train.input_norm=recentre']"])
    with pytest.raises(ConfigError, match=r"--set train.ensemble=1 --set train.member_overrides=\[\] \(or one "):
        train_checkpoint(bad, tmp_path / "members", dataset=tiny_data, progress=False)
    bad = epir.make_config("epir", "synthetic", recipe="alone", overrides=["train.subject_fraction=0.5"])
    with pytest.raises(ConfigError, match="train.subject_fraction=0.5: a checkpoint trains on every subject"):
        train_checkpoint(bad, tmp_path / "share", dataset=tiny_data, progress=False)


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


MIX_OVERRIDES = ["train.epochs=2", *TINY_EPIR, "train.distill_overrides=[train.epochs=1]"]


@pytest.fixture(scope="module")
def mixed(tiny_data, tmp_path_factory) -> Checkpoint:
    """A checkpoint of --recipe teacher-mix: EPIR and its STSTNet teacher, predicting their equal-weight blend."""
    cfg = epir.make_config("epir", "synthetic", recipe="teacher-mix", overrides=MIX_OVERRIDES)
    return train_checkpoint(cfg, tmp_path_factory.mktemp("mixed") / "ck", dataset=tiny_data, progress=False)


def test_teacher_mix_checkpoint_predicts_the_blend_loso_scored(mixed: Checkpoint, tiny_data) -> None:
    """A recipe that mixes its teacher into the predictions (train.distill_mix > 0) trains into one checkpoint
    holding both networks; loaded, it predicts exactly the fold blend LOSO scores: (1 - m) student + m teacher,
    each with its own normalisation and test-time augmentation."""
    from epir.engine.selection import mix_teacher, teacher_proba
    from epir.engine.train import predict_proba

    d = mixed.path
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "teacher.safetensors", "checkpoint.json",
                                             "config.yaml"}
    meta = json.loads((d / "checkpoint.json").read_text())
    assert meta["format_version"] == 2  # older epirs refuse it rather than predict with the student alone
    assert meta["teacher"]["model"]["name"] == "ststnet" and meta["teacher"]["mix"] == 0.5
    assert meta["teacher"]["normalization"]["kind"] == "none" and meta["teacher"]["weights"]["sha256"]
    loaded = load_checkpoint(d)
    assert loaded.teacher is not None and loaded.teacher_mix == 0.5
    cfg = epir.RunConfig.from_dict(meta["training"]["config"])
    x = tiny_data.x
    with torch.inference_mode():
        student = predict_proba(loaded.model, loaded.norm, x, tta=cfg.train.tta)
        expected = mix_teacher(cfg, student, teacher_proba(cfg, loaded.teacher, x))
        got = loaded.inference_model()(x).softmax(-1)
        fresh = mixed.inference_model()(x).softmax(-1)  # the checkpoint train_checkpoint returned predicts the same
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(fresh, got, rtol=0, atol=1e-6)
    assert not torch.allclose(got, student, atol=1e-4)  # the teacher does move the predictions


def test_teacher_mix_select_checkpoint_holds_the_teacher_when_chosen(tiny_data, tmp_path: Path) -> None:
    """--recipe teacher-mix-select: epir train chooses the weight on groups of all subjects and the checkpoint holds
    the teacher exactly when the chosen weight is above 0."""
    cfg = epir.make_config("epir", "synthetic", recipe="teacher-mix-select", overrides=MIX_OVERRIDES)
    ckpt = train_checkpoint(cfg, tmp_path / "ck", dataset=tiny_data, progress=False)
    sel = ckpt.meta["training"]["selection"]
    mix = [0.0, 0.25, 0.5, 0.75, 1.0][sel["chosen"]]
    assert len(sel["scores"]) == 5 and ckpt.meta["training"]["config"]["train"]["distill_mix"] == mix
    assert ("teacher" in ckpt.meta) == (mix > 0) == (tmp_path / "ck" / "teacher.safetensors").exists()
    assert load_checkpoint(tmp_path / "ck").teacher_mix == mix


def test_overwriting_a_mixed_checkpoint_with_a_plain_one_drops_the_teacher(mixed: Checkpoint, tiny_data,
                                                                          tmp_path: Path) -> None:
    d = copy_checkpoint(mixed.path, tmp_path / "ck")
    cfg = epir.make_config("epir", "synthetic", recipe="alone", overrides=["train.epochs=1", *TINY_EPIR])
    train_checkpoint(cfg, d, dataset=tiny_data, progress=False, overwrite=True)
    assert not (d / "teacher.safetensors").exists() and load_checkpoint(d).teacher is None


def test_a_damaged_teacher_is_a_clear_error(mixed: Checkpoint, tmp_path: Path) -> None:
    d = copy_checkpoint(mixed.path, tmp_path / "ck")
    blob = bytearray((d / "teacher.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (d / "teacher.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"teacher.safetensors does not match the SHA-256"):
        load_checkpoint(d)
    (d / "teacher.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="teacher.safetensors is missing"):
        load_checkpoint(d)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["teacher"].update(mix=1.5), r"teacher.mix must be a number in \(0, 1\]"),
    (lambda m: m["teacher"].update(mix=0), r"teacher.mix must be a number in \(0, 1\]"),
    (lambda m: m.update(format_version=1), "a 'teacher' entry needs format_version 2"),
    (lambda m: m["teacher"].pop("weights"), "missing key 'teacher.weights.file'"),
    (lambda m: m["teacher"]["model"].update(name="ststnett"), "Unknown model 'ststnett'"),
    (lambda m: m["teacher"]["model"]["args"].update(num_classes=4), "teacher.model.args.num_classes is 4"),
    (lambda m: m["teacher"]["normalization"].update(std=[1.0, 0.0, 1.0]), r"teacher.normalization must have std"),
    (lambda m: m["teacher"].update(tta="rotate"), "teacher.tta must be one of none, flip"),
])
def test_malformed_teacher_entry_is_a_clear_error(mixed: Checkpoint, tmp_path: Path, edit, message: str) -> None:
    assert_edit_is_a_clear_error(mixed, tmp_path, edit, message)


def test_save_checkpoint_needs_the_teacher_its_description_names(tmp_path: Path) -> None:
    from epir.inference.checkpoint import teacher_meta

    model, norm = create_model("ststnet"), InputNorm.fit("none", torch.zeros(1, 3, 28, 28))
    plain = make_meta(model_name="ststnet", model_args=resolve_model_args("ststnet", {}),
                      class_names=("a", "b", "c"), norm=norm, norm_kind="none", input_size=28)
    with pytest.raises(CheckpointError, match="exactly when meta has a 'teacher' entry"):
        save_checkpoint(tmp_path / "a", model, plain, teacher=create_model("ststnet"))
    with_teacher = {**plain, "format_version": 2, "teacher": teacher_meta(
        model_name="ststnet", model_args=resolve_model_args("ststnet", {}), norm=norm, norm_kind="none", mix=0.5)}
    with pytest.raises(CheckpointError, match="exactly when meta has a 'teacher' entry"):
        save_checkpoint(tmp_path / "b", model, with_teacher)

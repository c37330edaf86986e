"""Fault injection (issue 14): nothing wrong is ever reported as a result.

Each test reproduces one reported case: resume across protocols or changed data, tampered fold files,
divergence (LOSO and `epir train`), bad recipe values (checked before anything is written), malformed MEGC logs
(in test_results.py), a locked run directory, duplicate seeds, empty CSVs, maps of the wrong size, path
traversal, subset reruns, failed batch predictions, grayscale maps, mixed frame sizes, export overwrites,
damaged checkpoints, non-weights fold weights, bad config files. Each asserts the exit status or error, its
message, and where it matters that finished fold files are byte-identical afterwards."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from epir.cli import main


def loso_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["loso", "--model", "ststnet", "--dataset", "megc2019", "--root", str(root), "--epochs", "1",
            "--threads", "1", "--folds", "s01", "s02", "--out", str(out), "--no-progress", *extra]


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in (out / "folds").rglob("*.json")}


def test_fold_weights_rerun_of_an_honest_run_is_refused(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out)) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(loso_args(fake_root, out, "--fold-weights", str(tmp_path / "nonexistent"))) == 2
    err = capsys.readouterr().err
    assert "protocol" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_resume_on_reordered_data_is_refused(fake_root, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(fake_root, root)
    out = tmp_path / "run"
    assert main(loso_args(root, out)) == 0
    before = snapshot(out)
    csv = next(root.glob("*.csv"))
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    capsys.readouterr()
    assert main(loso_args(root, out)) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_resume_of_a_run_started_by_older_training_code_is_refused(fake_root, tmp_path, capsys) -> None:
    """A run directory whose fingerprint predates the training revision (round 9: batched models replay their own
    dropout masks) is not resumed with folds of two kinds."""
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--folds", "s01")) == 0
    fp = json.loads((out / "fingerprint.json").read_text())
    del fp["training_revision"]  # as written by round 8's code
    (out / "fingerprint.json").write_text(json.dumps(fp))
    before = snapshot(out)
    capsys.readouterr()
    assert main(loso_args(fake_root, out)) == 2
    err = capsys.readouterr().err
    assert "training_revision: None -> 2" in err and "older training code" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_tampered_fold_file_is_refused(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out)) == 0
    (out / "fingerprint.json").unlink()  # as a run directory from before fingerprints
    files = sorted((out / "folds" / "seed0").glob("*.json"))
    other = json.loads(files[1].read_text())
    files[0].write_text(json.dumps(other))  # another subject's record under this subject's name
    capsys.readouterr()
    assert main(loso_args(fake_root, out)) == 2
    assert "expected seed 0, subject" in capsys.readouterr().err
    files[0].write_text("{")
    assert main(loso_args(fake_root, out)) == 2
    assert "not a readable fold record" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["probs"][0].__setitem__(0, float("nan")), "not all finite numbers in [0, 1]"),
    (lambda r: r["probs"][0].__setitem__(0, -0.5), "not all finite numbers in [0, 1]"),
    (lambda r: r["probs"][0].__setitem__(0, "x"), "its probs are not numbers"),
    (lambda r: r["probs"].__setitem__(0, [p / 2 for p in r["probs"][0]]), "do not sum to 1"),
    (lambda r: r["predicted"].__setitem__(0, (r["predicted"][0] + 1) % 3), "not those of the largest probabilities"),
    # the parts of a blend with a teacher: a row too many, rows that do not sum to 1
    (lambda r: r.__setitem__("model_probs", [[0.5, 0.5, 0.0]] * (len(r["probs"]) + 1)), "its model_probs are not"),
    (lambda r: r.__setitem__("teacher_probs", [[0.5, 0.6, 0.0] for _ in r["probs"]]), "its teacher_probs are not"),
])
def test_a_fold_file_with_damaged_probabilities_is_not_resumed(fake_root, tmp_path, capsys, edit, message) -> None:
    """A finished fold is read back only if its probabilities are probabilities and its predictions their argmax."""
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--folds", "s01")) == 0
    path = next((out / "folds" / "seed0").glob("*.json"))
    rec = json.loads(path.read_text())
    if "largest" in message:  # make row 0's winner clear, so that another class is surely not it
        rec["probs"][0] = [0.8 if c == rec["predicted"][0] else 0.1 for c in range(3)]
    edit(rec)
    path.write_text(json.dumps(rec))
    before = snapshot(out)
    capsys.readouterr()
    assert main(loso_args(fake_root, out, "--folds", "s01")) == 2
    err = capsys.readouterr().err
    assert message in err and path.name in err and "Traceback" not in err
    assert snapshot(out) == before


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "train.epochs"),
    (["--batch-size", "-4"], "train.batch_size"),
    (["--lr", "-1"], "train.lr"),
    (["--lr", "nan"], "train.lr"),
    (["--threads", "-1"], "eval.threads"),
    (["--device", "gpu0"], "eval.device"),
    (["--set", "model.num_classes=2"], "num_classes"),
    (["--seeds", "0", "0"], "eval.seeds"),
    (["--seeds", "0", "-1"], "eval.seeds=[0, -1]: expected whole numbers >= 0 (got -1)"),
])
def test_bad_values_stop_before_the_run_directory_is_written(fake_root, tmp_path, capsys, flags, message) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, *flags)) == 2  # a repeated flag: argparse keeps the last
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "config.yaml").exists()
    assert main(loso_args(fake_root, out)) == 0  # the corrected rerun into the same --out works


def test_divergence_stops_the_fold(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--lr", "1e30", "--epochs", "3")) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "fold" in err and "Traceback" not in err
    assert not (out / "results.json").exists()


def test_an_exploded_but_finite_loss_stops_the_fold(fake_root, tmp_path, capsys) -> None:
    """STSTNet at lr 1e9 trains to a mean loss of about 1e19 with every prediction saturated, finite throughout: it
    used to be reported as a result."""
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--set", "train.lr=1e9", "--epochs", "3")) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "mean training loss" in err and "train.lr" in err and "Traceback" not in err
    assert not (out / "results.json").exists()


def test_exploded_loss_rule() -> None:
    import math

    import torch

    from epir.engine.train import EXPLODED_LOSS_FACTOR, check_training_loss, exploded_loss_limit
    from epir.errors import DivergedError

    limit = exploded_loss_limit(3)
    assert limit == pytest.approx(EXPLODED_LOSS_FACTOR * math.log(3))
    check_training_loss(torch.tensor([1.1, 5.0, 0.999 * limit]), 3, ["a", "b", "c"], 0, 1e-3, last=True)  # kept
    check_training_loss(torch.tensor([1.1, 1e19]), 3, ["a", "b"], 1, 1e9, last=False)  # a spike may recover
    with pytest.raises(DivergedError, match=r"^b epoch 2 \(the last\): the mean training loss is 1e\+19"):
        check_training_loss(torch.tensor([1.1, 1e19]), 3, ["a", "b"], 1, 1e9, last=True)
    with pytest.raises(DivergedError, match=r"^a, b epoch 1: the training loss is not finite"):
        check_training_loss(torch.tensor([float("nan"), float("inf")]), 3, ["a", "b"], 0, 1e-3, last=False)


def test_a_batched_member_whose_loss_explodes_is_named() -> None:
    import torch

    from epir.config import ModelConfig
    from epir.engine.batched import Member, fit_many
    from epir.engine.train import TrainConfig
    from epir.errors import DivergedError

    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 28, 28, generator=g) * 255
    y = torch.arange(24) % 3
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e9, optimizer="adam")
    members = [Member(x=x, y=y, seed=s, name=f"member {s}") for s in (0, 1)]
    with pytest.raises(DivergedError, match="member 0.*diverged"):
        fit_many(ModelConfig(name="ststnet"), members, cfg, num_classes=3)


def test_a_locked_run_directory_is_refused(fake_root, tmp_path, capsys) -> None:
    from epir.engine.runstore import RunLock

    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out)
    try:
        assert main(loso_args(fake_root, out)) == 2
        assert "in use by another epir run" in capsys.readouterr().err
    finally:
        lock.release()
    assert main(loso_args(fake_root, out)) == 0


def test_resuming_a_subset_keeps_the_whole_runs_results(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out)) == 0
    whole = (out / "results.json").read_bytes()
    config = (out / "config.yaml").read_bytes()
    args = [a if a != "s02" else "--no-progress" for a in loso_args(fake_root, out)]  # only s01
    assert main(args) == 0
    assert (out / "results.json").read_bytes() == whole
    assert (out / "config.yaml").read_bytes() == config  # it describes the results left there (both folds)
    assert not (out / "config.yaml.tmp").exists()


def test_protocol_of_a_run_without_results_json(fake_root, tmp_path) -> None:
    import pandas as pd

    from epir.engine.evaluate import evaluate_run_dir

    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--oracle-epoch")) == 0
    assert set(pd.read_csv(out / "predictions.csv")["protocol"]) == {"oracle-epoch (optimistic)"}
    (out / "results.json").unlink()
    assert evaluate_run_dir(out)["protocol"] == "oracle-epoch (optimistic)"


def test_empty_csv_and_path_traversal_are_clear_errors(fake_root, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(fake_root, root)
    csv = next(root.glob("*.csv"))
    text = csv.read_text()
    csv.write_text("")
    assert main(loso_args(root, tmp_path / "r1")) == 2
    assert "empty" in capsys.readouterr().err
    header, first, *rest = text.splitlines()
    cols = header.split(",")
    cells = first.split(",")
    cells[cols.index("sub")] = "../../etc"
    csv.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    assert main(loso_args(root, tmp_path / "r2")) == 2
    assert "not a plain name" in capsys.readouterr().err


def test_maps_of_another_size_are_refused_before_training(tmp_path, capsys) -> None:
    import torch

    from epir.engine.loso import run_loso
    from epir.errors import ConfigError
    from fakes import make_flow_dataset

    ds = make_flow_dataset()
    ds.x = torch.nn.functional.interpolate(ds.x, size=32)
    from epir import make_config

    with pytest.raises(ConfigError, match="accepts 28x28 maps"):
        run_loso(make_config("ststnet", "megc2019", overrides=["train.epochs=1"]), ds, progress=False)


def _rebuilt(**fields):
    """The fake dataset rebuilt through ``FlowDataset`` with some fields replaced."""
    from dataclasses import asdict

    from epir.data import FlowDataset
    from fakes import make_flow_dataset

    kept = asdict(make_flow_dataset())
    kept.update(fields)
    return FlowDataset(**kept)


def test_a_dataset_built_in_python_is_checked_when_made() -> None:
    import numpy as np
    import torch

    from epir.errors import DatasetError
    from fakes import make_flow_dataset

    good = make_flow_dataset()
    # NumPy maps, other real dtypes and whole-number float labels are taken as they are meant
    ds = _rebuilt(x=good.x.numpy().astype(np.float64), y=good.y.numpy().astype(np.float32))
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64 and torch.equal(ds.y, good.y)
    assert _rebuilt(x=good.x.to(torch.uint8)).x.dtype == torch.float32
    assert torch.equal(_rebuilt(y=good.y.tolist()).y, good.y)

    with pytest.raises(DatasetError, match=r"channels last.*x.permute\(0, 3, 1, 2\)"):
        _rebuilt(x=good.x.permute(0, 2, 3, 1))
    with pytest.raises(DatasetError, match="expected \\(N, C, H, W\\)"):
        _rebuilt(x=good.x[:, 0])
    nan = good.x.clone()
    nan[3, 1, 5, 5] = float("nan")
    with pytest.raises(DatasetError, match=f"sample 3 \\({good.sources[3]}/.*{good.clips[3]}.*NaN or infinite"):
        _rebuilt(x=nan)
    wrong = good.y.clone()
    wrong[2] = 7
    with pytest.raises(DatasetError, match="sample 2 .*label 7 is not a class index 0..2"):
        _rebuilt(y=wrong)
    with pytest.raises(DatasetError, match="whole-number class indices"):
        _rebuilt(y=good.y.to(torch.float32) + 0.5)
    with pytest.raises(DatasetError, match="clips has 1 entries"):
        _rebuilt(clips=["one"])


def test_maps_with_other_channels_or_scaled_to_one_are_named_before_training() -> None:
    from epir import make_config
    from epir.engine.loso import run_loso
    from epir.errors import ConfigError, MapRangeWarning
    from epir.runsetup import check_model_fits
    from fakes import make_flow_dataset

    good = make_flow_dataset()
    with pytest.raises(ConfigError, match="takes maps with 3 channels but dataset 'fake' holds 2"):
        run_loso(make_config("ststnet", "megc2019", overrides=["train.epochs=1"]), _rebuilt(x=good.x[:, :2]),
                 progress=False)
    scaled = _rebuilt(x=good.x / good.x.max())
    with pytest.warns(MapRangeWarning, match="within 0-1"):
        check_model_fits(make_config("ststnet", "megc2019"), scaled)


def test_predict_csv_exits_2_when_clips_failed(ckpt_dir, tmp_path, capsys) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "broken.avi").write_bytes(b"not a video")
    code = main(["predict", str(folder), "--checkpoint", str(ckpt_dir), "--csv", str(tmp_path / "p.csv")])
    assert code == 2
    assert "1 of 1 clips failed" in capsys.readouterr().err
    assert (tmp_path / "p.csv").is_file()  # the reasons are still written


def test_export_refuses_to_overwrite(ckpt_dir, tmp_path, capsys) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep me")
    assert main(["export", "--checkpoint", str(ckpt_dir), "--onnx", str(target)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["weights"].pop("sha256"), "weights.sha256"),
    (lambda m: m["model"]["args"].update(num_classes=10**12), "num_classes"),
    (lambda m: m["model"]["args"].update(dim=-48), r"model 'epir': model.dim=-48: expected an integer >= 1"),
    (lambda m: m.update(class_names=["neg\x1b[31m", "pos", "sur"]), "printable"),
    (lambda m: m["input"]["normalization"].update(std=[1e-300, 1.0, 1.0]), "std in"),
])
def test_damaged_checkpoint_descriptions_are_refused(ckpt_dir, tmp_path, edit, message) -> None:
    from epir.inference.checkpoint import CheckpointError, load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(ckpt_dir, ck)
    meta = json.loads((ck / "checkpoint.json").read_text())
    edit(meta)
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ck)


def test_deeply_nested_checkpoint_json(ckpt_dir, tmp_path) -> None:
    from epir.inference.checkpoint import CheckpointError, load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(ckpt_dir, ck)
    (ck / "checkpoint.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match="nested"):
        load_checkpoint(ck)


def test_preprocess_crop_size_is_bounded() -> None:
    from epir.errors import ConfigError
    from epir.preprocess.pipeline import PreprocessSettings

    with pytest.raises(ConfigError, match="16 to 1024"):
        PreprocessSettings(crop_size=100000)


def test_bad_config_file_and_root_for_synthetic(tmp_path, capsys) -> None:
    assert main(["loso", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert main(["loso", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["loso", "--dataset", "synthetic", "--root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "has no root" in capsys.readouterr().err
    assert main(["list", "subjects", "--dataset", "synthetic", "--root", str(tmp_path)]) == 2  # was ignored
    assert "has no root" in capsys.readouterr().err


def test_fold_weights_that_are_not_weights(fake_root, tmp_path, capsys) -> None:
    import pickle

    folder = tmp_path / "w"
    folder.mkdir()
    for sid in ("s01", "s02"):
        (folder / f"{sid}.pth").write_bytes(pickle.dumps({"not": "tensors"}))
    code = main(loso_args(fake_root, tmp_path / "r", "--fold-weights", str(folder)))
    err = capsys.readouterr().err
    assert code == 2 and "--fold-weights" in err and "weights_only" not in err and "Traceback" not in err


def test_grayscale_map_is_refused(ckpt_dir, tmp_path, capsys) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "gray.png"), np.zeros((28, 28), np.uint8))
    assert main(["predict", "--map", str(tmp_path / "gray.png"), "--checkpoint", str(ckpt_dir)]) == 2
    assert "3-channel" in capsys.readouterr().err


def test_nan_weights_checkpoint_is_refused(ckpt_dir, tmp_path) -> None:
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    from epir.inference.checkpoint import CheckpointError, load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(ckpt_dir, ck)
    state = load_file(ck / "model.safetensors")
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, ck / "model.safetensors")
    meta = json.loads((ck / "checkpoint.json").read_text())
    blob = (ck / "model.safetensors").read_bytes()
    meta["weights"].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(ck)


def test_frame_folder_of_mixed_sizes(tmp_path) -> None:
    import cv2
    import numpy as np

    from epir.preprocess.video import ClipError, FrameSequence, list_frames, read_frames

    folder = tmp_path / "clip"
    folder.mkdir()
    cv2.imwrite(str(folder / "img1.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(folder / "img2.png"), np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ClipError, match="one size"):
        read_frames(folder)
    seq = FrameSequence(list_frames(folder))
    seq[0]
    with pytest.raises(ClipError, match="one size"):
        seq[1]


def test_train_never_saves_a_diverged_model(tmp_path, capsys) -> None:
    out = tmp_path / "ck"
    code = main(["train", "--model", "epir", "--dataset", "synthetic", "--epochs", "3", "--lr", "1e30",
                 "--set", "train.grad_clip=0", "--set", "model.dim=16", "--set", "model.heads=2",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "diverged" in err and "Traceback" not in err
    assert not (out / "model.safetensors").exists()


# ---- output folders that cannot be written: one line, before any work ----------------------------------------------


@pytest.fixture()
def file_in_the_way(tmp_path: Path) -> Path:
    """A plain file where an output folder's parent should be (a read-only folder does not stop root)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    return blocker


def never_called(*_args, **_kwargs):
    raise AssertionError("the work started before the output folder was checked")


@pytest.mark.parametrize("argv, what, patch", [
    (["loso", "--model", "ststnet", "--dataset", "synthetic", "--epochs", "1", "--folds", "s01", "--no-progress",
      "--out", "{out}"], "run directory", "epir.engine.folds.fit"),
    (["train", "--model", "ststnet", "--dataset", "synthetic", "--epochs", "1", "--no-progress", "--out", "{out}"],
     "checkpoint folder", "epir.inference.training.load_data"),
    (["pretrain", "--model", "ststnet", "--subjects", "2", "--clips", "2", "--epochs", "1", "--no-progress",
      "--out", "{out}/w"], "weights file", "epir.engine.pretrain.synthetic_corpus"),
    (["compare", "--models", "ststnet", "--dataset", "synthetic", "--epochs", "1", "--folds", "s01", "--no-progress",
      "--out", "{out}"], "comparison folder", "epir.engine.compare.run_loso"),
    (["ablate", "--model", "epir", "--switches", "merge", "--dataset", "synthetic", "--epochs", "1", "--folds", "s01",
      "--no-progress", "--out", "{out}"], "ablation folder", "epir.engine.ablate.run_loso"),
])
def test_an_output_folder_that_cannot_be_written_stops_before_the_work(file_in_the_way, monkeypatch, capsys, argv,
                                                                        what, patch) -> None:
    monkeypatch.setattr(patch, never_called)
    out = file_in_the_way / "out"
    code = main([a.replace("{out}", str(out)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"cannot write the {what}" in err and f"{file_in_the_way} is a file, not a folder" in err, err


def test_a_report_folder_that_cannot_be_written_is_a_config_error(file_in_the_way) -> None:
    import pandas as pd

    from epir.engine.report import write_report
    from epir.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot write the report folder .* is a file, not a folder"):
        write_report(pd.DataFrame({"model": ["m"]}), file_in_the_way / "r")


def test_export_to_an_unwritable_folder_is_one_line(ckpt_dir, file_in_the_way, capsys) -> None:
    code = main(["export", "--checkpoint", str(ckpt_dir), "--onnx", str(file_in_the_way / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the ONNX file" in err and "is a file, not a folder" in err, err


def test_writable_dir_creates_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from epir.fileio import writable_dir, writable_parent

    out = writable_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []
    assert writable_parent(tmp_path / "c" / "w.safetensors") == tmp_path / "c" / "w.safetensors"
    assert list((tmp_path / "c").iterdir()) == []


def test_a_machine_error_mid_command_is_one_line(monkeypatch, capsys) -> None:
    import epir.cli as cli

    def full_disk(_args):
        raise OSError(28, "No space left on device", "runs/x/folds/s0/a.json")

    monkeypatch.setattr(cli, "cmd_loso", full_disk)
    code = main(["loso", "--dataset", "synthetic"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "No space left on device" in err and "run the same command again" in err


def test_train_refuses_a_negative_seed(tmp_path, capsys) -> None:
    code = main(["train", "--model", "ststnet", "--dataset", "synthetic", "--seed", "-1", "--epochs", "1",
                 "--out", str(tmp_path / "ck"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "seed (--seed) must be a whole number >= 0, got -1" in err


@pytest.mark.parametrize(("flags", "expected"), [
    (["--set", "train.epochs=-3"], "train.epochs=-3: expected an integer >= 1"),
    (["--set", "train.hflip=3"], "train.hflip=3.0: expected a probability in [0, 1]"),
    (["--threads", "-3"], "eval.threads=-3: expected an integer >= 0"),
])
@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_train_and_pretrain_check_the_recipe_before_any_work(tmp_path, capsys, command, flags, expected) -> None:
    """``epir train`` saved an untrained model for 0 or fewer epochs, and ``epir pretrain`` wrote untrained weights."""
    out = tmp_path / ("ck" if command == "train" else "pre.safetensors")
    base = (["train", "--model", "ststnet", "--dataset", "synthetic", "--out", str(out)] if command == "train" else
            ["pretrain", "--model", "ststnet", "--subjects", "2", "--clips", "2", "--no-cache", "--out", str(out)])
    code = main([*base, *flags, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not out.exists()


def test_pretrain_epochs_zero_is_refused_not_replaced(tmp_path, capsys) -> None:
    out = tmp_path / "pre.safetensors"
    code = main(["pretrain", "--model", "ststnet", "--epochs", "0", "--subjects", "2", "--clips", "2", "--no-cache",
                 "--out", str(out), "--no-progress"])
    assert code == 2 and "train.epochs=0: expected an integer >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_pretrain_takes_its_epochs_from_set_as_from_epochs(tmp_path) -> None:
    """``--set train.epochs=2`` was replaced by pretraining's default of 10 epochs."""
    out = tmp_path / "pre.safetensors"
    assert main(["pretrain", "--model", "ststnet", "--set", "train.epochs=2", "--subjects", "2", "--clips", "2",
                 "--no-cache", "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["recipe"]["epochs"] == 2


def test_run_loso_given_something_other_than_a_config() -> None:
    from epir import run_loso
    from epir.errors import ConfigError

    with pytest.raises(ConfigError, match="expected a RunConfig, got str 'epir'; build one with epir.make_config"):
        run_loso("epir")  # type: ignore[arg-type]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--set", "train.schedule=bogus"], "train.schedule='bogus': expected constant | cosine"),
    (["--set", "train.optimizer=adma"], "train.optimizer='adma': expected adam | adamw | sgd"),
    (["--set", "train.average=swag"], "train.average='swag': expected none | ema | swa"),
    (["--set", "train.class_weight=inverse"], "train.class_weight='inverse': expected none | balanced"),
    (["--set", "train.class_weight_power=-1"], "train.class_weight_power=-1.0: expected a number in [0, 4]"),
    (["--recipe", "alone", "--set", "train.class_weight=none", "--set", "train.class_weight_power=0.5"],
     "train.class_weight_power=0.5: expected 1 without class weights; set train.class_weight=balanced"),
    (["--set", 'train.select=["train.epochs=0","train.epochs=2"]'],
     "train.select candidate 'train.epochs=0': train.epochs=0: expected an integer >= 1"),
    (["--set", "train.distill=ststnet", "--set", 'train.distill_overrides=["train.lr=-1"]'],
     "the teacher's recipe (ststnet's default with train.distill_overrides): train.lr=-1.0"),
])
@pytest.mark.parametrize("command", ["loso", "train"])
def test_recipe_names_candidates_and_teacher_recipes_are_checked_first(tmp_path, capsys, command, flags,
                                                                        expected) -> None:
    """A bogus schedule ran while warm-up lasted; a 0-epoch candidate was trained, scored and could be chosen; a
    teacher's lr of -1 was a traceback from torch after the run directory was made."""
    out = tmp_path / "out"
    code = main([command, "--model", "epir", "--dataset", "synthetic", "--epochs", "2", *flags, "--out", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("address", ["bogus", "tcp://host", "tcp://:8786"])
def test_a_dask_address_without_host_or_port_is_refused_first(tmp_path, capsys, address) -> None:
    """'bogus' was a ValueError traceback from distributed, then 30 s of client shutdown noise."""
    out = tmp_path / "out"
    code = main(["loso", "--model", "ststnet", "--dataset", "synthetic", "--epochs", "1", "--dask-scheduler", address,
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"eval.dask_scheduler={address!r}: expected a scheduler address such as tcp://HOST:8786" in err
    assert not out.exists()

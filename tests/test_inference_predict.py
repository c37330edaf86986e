"""`epir predict` and `Predictor` (issue 6): a generated clip as a video file and as a frame folder, apex
estimation, batch prediction, flow-map input, and bad inputs that each give a clear error and no traceback."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import epir
from epir.cli import main
from epir.data import load_dataset
from epir.data.synthetic import make_clip, random_subject, render_face
from epir.inference import Predictor
from epir.preprocess.face import FaceAligner, NoFaceError
from epir.preprocess.video import ClipError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_folder(frames: list[np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"img{i + 1}.png"), f)
    return folder


def write_video(frames: list[np.ndarray], path: Path) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (w, h))  # lossless
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return make_clip(random_subject(rng, 64), "positive", rng, n_frames=4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip_frames) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {"folder": write_folder(clip_frames, root / "frames"), "video": write_video(clip_frames, root / "clip.avi")}


@pytest.fixture(scope="module")
def predictor(ckpt_dir: Path) -> Predictor:
    return Predictor.load(ckpt_dir)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("form", ["folder", "video"])
def test_predict_a_clip_in_both_forms(predictor: Predictor, clips, clip_frames, form: str) -> None:
    p = predictor.predict(clips[form], apex=3)
    assert set(p.probabilities) == {"negative", "positive", "surprise"}
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert p.class_name == max(p.probabilities, key=p.probabilities.get)
    assert (p.onset, p.apex, p.apex_estimated) == (0, 3, False)
    assert p.map.shape == (3, 28, 28) and p.map.dtype == np.uint8
    for stage in ("read", "face", "flow", "map", "model", "total"):
        assert p.timings[stage] >= 0
    same = predictor.predict(clip_frames, apex=3)  # lossless video, PNG frames and the arrays agree exactly
    assert np.array_equal(p.map, same.map) and p.probabilities == same.probabilities


def test_predicted_map_is_the_training_map(predictor: Predictor, clip_frames) -> None:
    """The checkpoint's preprocessing reproduces how the synthetic training maps were made."""
    from epir.data.synthetic import TVL1_PARAMS
    from epir.preprocess.flow import flow_map

    p = predictor.predict(clip_frames, onset=1, apex=3)
    expected = flow_map(clip_frames[1], clip_frames[3], "tvl1", 28, params=TVL1_PARAMS)
    assert np.abs(p.map.astype(np.float32) - expected).max() <= 0.5 + 1e-3  # uint8 rounding only


@pytest.mark.parametrize("form", ["folder", "video"])
def test_cli_predict_json(ckpt_dir: Path, clips, form: str, capsys) -> None:
    code, out, err = run_cli(["predict", str(clips[form]), "--checkpoint", str(ckpt_dir), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["onset"] == 0 and result["apex_estimated"] is True and 1 <= result["apex"] <= 3
    code, out, err = run_cli(["predict", str(clips[form]), "--checkpoint", str(ckpt_dir), "--onset", "1",
                              "--apex", "2"], capsys)
    assert code == 0, err
    assert "prediction:" in out and "onset frame 1, apex frame 2 (given)" in out and "time:" in out


def test_apex_estimation_finds_the_peak(predictor: Predictor) -> None:
    style = random_subject(np.random.default_rng(3), 96)
    peak = 5
    intensity = [0.0, 0.5, 1.2, 2.0, 2.8, 3.5, 2.4, 1.4, 0.6, 0.2]  # rises to frame 5, then relaxes
    frames = [render_face(style, {"AU12": a, "AU6": 0.6 * a}) for a in intensity]
    p = predictor.predict(frames)
    assert p.apex_estimated and p.apex == peak
    late = predictor.predict(frames, onset=6)  # from a later onset, the motion grows towards the clip's end
    assert late.onset == 6 and late.apex == 9


def test_predict_folder_to_csv(predictor: Predictor, clip_frames, tmp_path: Path) -> None:
    import pandas as pd

    root = tmp_path / "batch"
    write_folder(clip_frames, root / "a_frames")
    write_video(clip_frames, root / "b.avi")
    (root / "c_broken.mp4").write_bytes(b"not a video")
    (root / "notes.txt").write_text("ignored: not a clip")
    df = predictor.predict_folder(root, tmp_path / "out.csv", apex=2)
    assert list(df["clip"]) == ["a_frames", "b.avi", "c_broken.mp4"]
    ok = df[df["error"] == ""]
    assert len(ok) == 2 and ok[["prob_negative", "prob_positive", "prob_surprise"]].sum(axis=1).round(5).eq(1).all()
    assert "cannot be opened" in df.loc[2, "error"]
    assert pd.read_csv(tmp_path / "out.csv").shape[0] == 3


def test_cli_batch(ckpt_dir: Path, clip_frames, tmp_path: Path, capsys) -> None:
    write_video(clip_frames, (tmp_path / "batch").mkdir() or tmp_path / "batch" / "one.avi")
    code, out, err = run_cli(["predict", str(tmp_path / "batch"), "--checkpoint", str(ckpt_dir), "--csv",
                              str(tmp_path / "preds.csv")], capsys)
    assert code == 0, err
    assert "1 clips, 0 failed" in out and (tmp_path / "preds.csv").is_file()


def test_predict_flow_map_image(predictor: Predictor, ckpt_dir: Path, tmp_path: Path, capsys) -> None:
    data = load_dataset("synthetic", n_subjects=3, clips_per_subject=4, seed=0)
    rgb = data.x[0].numpy().transpose(1, 2, 0).round().astype(np.uint8)  # u, v, strain as R, G, B
    cv2.imwrite(str(tmp_path / "map.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    p = predictor.predict_map_file(tmp_path / "map.png")
    expected = predictor.predict_proba(np.round(data.x[0].numpy()))[0]
    assert np.allclose(list(p.probabilities.values()), expected, atol=1e-6)
    code, out, err = run_cli(["predict", "--map", str(tmp_path / "map.png"), "--checkpoint", str(ckpt_dir)], capsys)
    assert code == 0 and "prediction:" in out, err


# ------------------------------------------------------------------------------------------- bad inputs


def test_clip_without_a_face(ckpt_dir: Path) -> None:
    blank = [np.full((64, 64, 3), 128, np.uint8)] * 3
    no_face = Predictor.load(ckpt_dir, preprocess={"align": True}, aligner=FaceAligner(detector=lambda gray: []))
    with pytest.raises(NoFaceError, match="No face"):
        no_face.predict(blank, apex=2)


def test_cli_clip_without_a_face(ckpt_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("dlib")
    rng = np.random.default_rng(0)
    frames = [np.clip(128 + rng.normal(0, 3, (96, 96, 3)), 0, 255).astype(np.uint8) for _ in range(3)]
    folder = write_folder(frames, tmp_path / "noface")
    code, out, err = run_cli(["predict", str(folder), "--checkpoint", str(ckpt_dir), "--preprocess", "align=true"],
                             capsys)
    assert code == 2 and "Traceback" not in err
    assert "No face found" in err and "noface" in err


@pytest.mark.parametrize("case", ["unreadable video", "missing clip", "onset after apex", "onset equals apex",
                                  "apex beyond video", "apex beyond folder", "onset beyond folder", "empty folder",
                                  "negative index", "bad preprocess key", "bad checkpoint"])
def test_bad_inputs_are_clear_errors(case: str, ckpt_dir: Path, clips, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    (tmp_path / "empty").mkdir()
    ck = ["--checkpoint", str(ckpt_dir)]
    args, message = {
        "unreadable video": ([str(tmp_path / "broken.mp4"), *ck], "cannot be opened"),
        "missing clip": ([str(tmp_path / "nothing.avi"), *ck], "does not exist"),
        "onset after apex": ([str(clips["video"]), *ck, "--onset", "3", "--apex", "1"], "must come before the apex"),
        "onset equals apex": ([str(clips["folder"]), *ck, "--onset", "2", "--apex", "2"], "must come before"),
        "apex beyond video": ([str(clips["video"]), *ck, "--apex", "40"], "beyond the clip"),
        "apex beyond folder": ([str(clips["folder"]), *ck, "--apex", "40"], "beyond the clip"),
        "onset beyond folder": ([str(clips["folder"]), *ck, "--onset", "9"], "beyond the clip"),
        "empty folder": ([str(tmp_path / "empty"), *ck], "holds no image files"),
        "negative index": ([str(clips["folder"]), *ck, "--onset", "-1"], "integer from 0"),
        "bad preprocess key": ([str(clips["folder"]), *ck, "--preprocess", "flow_metod=dis"], "flow_method"),
        "bad checkpoint": ([str(clips["folder"]), "--checkpoint", str(tmp_path)], "not an epir checkpoint"),
    }[case]
    code, out, err = run_cli(["predict", *args], capsys)
    assert code == 2, out
    assert "Traceback" not in err and message in err and err.startswith("epir predict: error:")


@pytest.mark.parametrize("kind", ["truncated mp4", "garbage mp4"])
def test_broken_video_gives_only_our_error(kind: str, ckpt_dir: Path, clip_frames, tmp_path: Path, capfd) -> None:
    """FFmpeg's own complaint ("moov atom not found") does not reach stderr (fd 2): only our one-line error."""
    path = tmp_path / "clip.mp4"
    if kind == "truncated mp4":
        h, w = clip_frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
        assert writer.isOpened()
        for f in clip_frames * 4:
            writer.write(f)
        writer.release()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # mp4v writes its index (moov) last: cut off with the end
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    capfd.readouterr()
    code = main(["predict", str(path), "--checkpoint", str(ckpt_dir)])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"epir predict: error: Video {path} cannot be opened"), err


def test_predictor_rejects_bad_maps_and_frames(predictor: Predictor) -> None:
    with pytest.raises(epir.ConfigError, match=r"\(3, 28, 28\)"):
        predictor.predict_map(np.zeros((28, 28)))
    with pytest.raises(epir.ConfigError, match=r"channels last: pass maps.transpose\(2, 0, 1\)"):
        predictor.predict_map(np.zeros((28, 28, 3)))
    with pytest.raises(ClipError, match="frames"):
        predictor.predict([np.zeros(5)])


# ------------------------------------------------------------------------------------------- face alignment


@pytest.fixture(scope="module")
def face_frames() -> list[np.ndarray]:
    """A drawn 224-pixel face that dlib finds (seed 4), lip corners pulled from frame 0 to frame 2."""
    pytest.importorskip("dlib")
    style = random_subject(np.random.default_rng(4), 224)
    return [render_face(style, {"AU12": a}) for a in (0.0, 0.8, 1.6)]


def test_predict_with_face_alignment(ckpt_dir: Path, face_frames, tmp_path: Path) -> None:
    from epir.inference.explain import EXPLAIN_SIZE

    aligned = Predictor.load(ckpt_dir, preprocess={"align": True, "crop_size": 128})
    p = aligned.predict(face_frames, apex=2)
    assert p.result.onset_face is not None and p.result.onset_face.landmarks.shape == (68, 2)
    assert p.face.shape == (128, 128, 3) and p.timings["face"] > 0
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    path = aligned.explain(p, tmp_path / "aligned.png")
    img = cv2.imread(str(path))
    assert (img.shape[1], img.shape[0]) == EXPLAIN_SIZE


def test_mosaic_around_each_clips_landmarks(face_frames, tmp_path: Path) -> None:
    """A mosaic model trained on per-sample landmarks gets each clip's own five points."""
    import torch

    from epir.engine.train import InputNorm
    from epir.inference.checkpoint import make_meta, save_checkpoint
    from epir.models import create_model

    torch.manual_seed(0)
    norm = InputNorm(torch.full((1, 3, 1, 1), 100.0), torch.full((1, 3, 1, 1), 50.0))
    meta = make_meta(model_name="ststnet", model_args={}, class_names=("negative", "positive", "surprise"),
                     norm=norm, norm_kind="standardize", input_size=28, transform="mosaic", landmarks="per-clip",
                     preprocessing={"align": True, "crop_size": 128})
    ck = save_checkpoint(tmp_path / "ck", create_model("ststnet").eval(), meta)
    predictor = Predictor.load(ck)
    p = predictor.predict(face_frames, apex=2)
    assert p.landmarks.shape == (5, 2) and (p.landmarks > 0).all() and (p.landmarks < 28).all()
    assert np.allclose(list(p.probabilities.values()), predictor.predict_proba(p.map, p.landmarks)[0])
    with pytest.raises(epir.ConfigError, match="own landmarks"):
        predictor.predict_map(p.map)
    with pytest.raises(epir.ConfigError, match="alignment must stay on"):
        Predictor.load(ck, preprocess={"align": False}).predict(face_frames, apex=2)

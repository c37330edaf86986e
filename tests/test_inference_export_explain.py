"""ONNX export (onnxruntime equals PyTorch within 1e-4 on random inputs) and `--explain` PNGs (issue 6)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from epir.cli import main
from epir.data.synthetic import make_clip, random_subject
from epir.engine.train import InputNorm
from epir.inference import Predictor
from epir.inference.checkpoint import load_checkpoint, make_meta, save_checkpoint
from epir.inference.explain import EXPLAIN_SIZE, model_evidence
from epir.inference.export import export_onnx, onnx_session, random_maps
from epir.models import create_model, resolve_model_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_untrained(name: str, args: dict, path: Path, transform: str = "none", tta: str = "none") -> Path:
    torch.manual_seed(0)
    model = create_model(name, **args).eval()
    norm = InputNorm(torch.tensor([90.0, 120.0, 60.0]).reshape(1, 3, 1, 1),
                     torch.tensor([40.0, 50.0, 30.0]).reshape(1, 3, 1, 1))
    meta = make_meta(model_name=name, model_args=resolve_model_args(name, args), class_names=("a", "b", "c"),
                     norm=norm, norm_kind="standardize", input_size=28, transform=transform, tta=tta)
    return save_checkpoint(path, model, meta)


def test_onnx_matches_pytorch(ckpt_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    code = main(["export", "--checkpoint", str(ckpt_dir), "--onnx", str(tmp_path / "m.onnx")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "max |logit difference|" in out
    ckpt = load_checkpoint(ckpt_dir)
    session = onnx_session(tmp_path / "m.onnx")
    model = ckpt.inference_model()
    for batch, seed in ((1, 1), (5, 2)):  # the batch axis is dynamic
        x = random_maps(batch, seed=seed)
        logits, probs = session.run(["logits", "probabilities"], {"x": x.numpy()})
        with torch.inference_mode():
            ref = model(x)
        assert np.abs(logits - ref.numpy()).max() <= 1e-4
        assert np.abs(probs - ref.softmax(-1).numpy()).max() <= 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["epir.class_names"]) == ["negative", "positive", "surprise"]


def test_onnx_of_a_model_with_mosaic_input(tmp_path: Path) -> None:
    """The input transform (HTNet's mosaic) is inside the graph too, like the normalisation."""
    pytest.importorskip("onnxruntime")
    ckpt = save_untrained("ststnet", {}, tmp_path / "ck", transform="mosaic")
    report = export_onnx(ckpt, tmp_path / "s.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4


def test_flow_magnitude_channel_is_inside_the_model_and_its_onnx_graph(tmp_path: Path) -> None:
    """model.flow_magnitude computes its fourth channel inside the model (a median by sort, a square root): a
    checkpoint takes the user's three channels, and the ONNX graph computes the fourth too."""
    pytest.importorskip("onnxruntime")
    ckpt = save_untrained("epir", {"dim": 16, "heads": 2, "flow_magnitude": True}, tmp_path / "ck")
    assert load_checkpoint(ckpt).model.tokenizer.proj.in_features == 5 * 4 * 7 * 7
    report = export_onnx(ckpt, tmp_path / "m.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4


def test_smooth_input_is_inside_the_model_and_its_onnx_graph(tmp_path: Path) -> None:
    """data.input_transform=smooth: the checkpoint's model smooths (and renormalises) the map before its own
    normalisation, as LOSO trained it, in PyTorch and in the exported graph."""
    from epir.data.transforms import smooth_maps

    ckpt = load_checkpoint(save_untrained("epir", {"dim": 16, "heads": 2}, tmp_path / "ck", transform="smooth"))
    x = random_maps(4, seed=5)
    with torch.inference_mode():
        got = ckpt.inference_model()(x)
        want = ckpt.model((smooth_maps(x) - ckpt.norm.mean) / ckpt.norm.std)
    torch.testing.assert_close(got, want)
    if importlib.util.find_spec("onnxruntime") is not None:
        report = export_onnx(ckpt, tmp_path / "s.onnx")
        assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4


def test_flip_tta_checkpoint_predicts_the_mean_of_map_and_mirror_in_torch_and_onnx(tmp_path: Path) -> None:
    """A recipe with train.tta=flip predicts as LOSO scored it: the mean of the map's and its mirror's
    probabilities, in PyTorch and in the exported ONNX graph."""
    from epir.data.augment import mirror_maps
    from epir.engine.train import predict_proba

    ckpt = load_checkpoint(save_untrained("epir", {"dim": 16, "heads": 2}, tmp_path / "ck", tta="flip"))
    assert ckpt.info.tta == "flip"
    x = random_maps(4, seed=3)
    with torch.inference_mode():
        probs = ckpt.inference_model()(x).softmax(-1)
    expected = predict_proba(ckpt.model, ckpt.norm, x, tta="flip")
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    plain = predict_proba(ckpt.model, ckpt.norm, x)
    assert not torch.allclose(probs, plain, atol=1e-4)  # the mirror changes the answer
    torch.testing.assert_close((plain + predict_proba(ckpt.model, ckpt.norm, mirror_maps(x))) / 2, expected)
    if importlib.util.find_spec("onnxruntime") is not None:
        report = export_onnx(ckpt, tmp_path / "t.onnx")
        assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4


def test_teacher_mix_checkpoint_exports_both_networks_and_their_blend(tmp_path: Path) -> None:
    """A checkpoint that mixes its teacher in (--recipe teacher-mix) exports as one graph: EPIR with the test-time
    flip, STSTNet on its own input scale, and the blend; the file's metadata pins the teacher's description."""
    pytest.importorskip("onnxruntime")
    from epir.errors import ExportError
    from epir.inference.checkpoint import teacher_meta
    from epir.inference.export import verify_onnx

    def save(path: Path) -> Path:
        torch.manual_seed(0)
        model = create_model("epir", dim=16, heads=2).eval()
        norm = InputNorm(torch.tensor([90.0, 120.0, 60.0]).reshape(1, 3, 1, 1),
                         torch.tensor([40.0, 50.0, 30.0]).reshape(1, 3, 1, 1))
        teacher = create_model("ststnet").eval()
        t_meta = teacher_meta(model_name="ststnet", model_args=resolve_model_args("ststnet", {}),
                              norm=InputNorm.fit("none", torch.zeros(1, 3, 1, 1)), norm_kind="none", mix=0.25)
        meta = make_meta(model_name="epir", model_args=resolve_model_args("epir", {"dim": 16, "heads": 2}),
                         class_names=("a", "b", "c"), norm=norm, norm_kind="standardize", input_size=28, tta="flip",
                         teacher=t_meta)
        return save_checkpoint(path, model, meta, teacher=teacher)

    ckpt = load_checkpoint(save(tmp_path / "ck"))
    report = export_onnx(ckpt, tmp_path / "mix.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert Predictor.load(tmp_path / "ck", onnx=tmp_path / "mix.onnx").backend == "onnx"
    assert "mixed with 'ststnet' at 0.25" in repr(Predictor.load(tmp_path / "ck"))
    evidence = model_evidence(Predictor.load(tmp_path / "ck"), random_maps(1)[0].numpy())
    assert evidence.kind == "dtsm" and "mixes in its teacher at 0.25" in evidence.note  # EPIR's tokens, said so
    metadata = onnx_session(tmp_path / "mix.onnx").get_modelmeta().custom_metadata_map
    verify_onnx(ckpt, metadata, tmp_path / "mix.onnx")
    other = tmp_path / "other"  # the same weights, the teacher weighted differently: not the exported graph
    other.mkdir()
    for f in (tmp_path / "ck").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "checkpoint.json").read_text())
    meta["teacher"]["mix"] = 0.5
    (other / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="another model description"):
        verify_onnx(load_checkpoint(other), metadata, tmp_path / "mix.onnx")


def test_recentred_checkpoint_predicts_as_trained_in_torch_and_onnx(tmp_path: Path) -> None:
    """train.input_norm=recentre travels with the checkpoint: the loaded module recentres each map before the
    affine normalisation, in PyTorch and in the ONNX graph."""
    from epir.data.augment import recentre_maps
    from epir.engine.train import predict_proba

    torch.manual_seed(0)
    model = create_model("ststnet").eval()
    x = random_maps(6, seed=4)
    norm = InputNorm.fit("recentre", x)
    meta = make_meta(model_name="ststnet", model_args=resolve_model_args("ststnet", {}), class_names=("a", "b", "c"),
                     norm=norm, norm_kind="recentre", input_size=28)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "ck", model, meta))
    assert ckpt.norm.recentre
    with torch.inference_mode():
        probs = ckpt.inference_model()(x).softmax(-1)
        direct = model((recentre_maps(x) - norm.mean) / norm.std).softmax(-1)
    torch.testing.assert_close(probs, direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs, predict_proba(model, norm, x), atol=1e-5, rtol=0)
    if importlib.util.find_spec("onnxruntime") is not None:
        report = export_onnx(ckpt, tmp_path / "r.onnx")
        assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4


def test_export_errors_are_clear(ckpt_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["export", "--checkpoint", str(tmp_path / "none"), "--onnx", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code = main(["export", "--checkpoint", str(ckpt_dir), "--onnx", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a directory" in err


# ------------------------------------------------------------------------------------------- explain


def png_size(path: Path) -> tuple[int, int]:
    import cv2

    img = cv2.imread(str(path))
    return img.shape[1], img.shape[0]


def test_cli_explain_writes_a_png_of_the_documented_size(ckpt_dir: Path, tmp_path: Path, capsys) -> None:
    import cv2

    rng = np.random.default_rng(7)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(make_clip(random_subject(rng, 64), "surprise", rng, n_frames=3)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    png = tmp_path / "why.png"
    code = main(["predict", str(folder), "--checkpoint", str(ckpt_dir), "--explain", str(png)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"explanation: {png}" in out
    assert png_size(png) == EXPLAIN_SIZE


@pytest.mark.parametrize("name, args, kind", [
    ("epir", {"dim": 16, "heads": 2, "select_ratio": 0.5}, "dtsm"),
    ("epir", {"dim": 16, "heads": 2}, "dtsm"),
    ("epir", {"dim": 16, "heads": 2, "dtsm": False}, "attention"),
    ("ststnet", {}, "saliency"),
])
def test_evidence_of_each_model_kind(name: str, args: dict, kind: str, tmp_path: Path) -> None:
    predictor = Predictor.load(save_untrained(name, args, tmp_path / "ck"))
    flow_map = random_maps(1)[0].numpy()
    ev = model_evidence(predictor, flow_map)
    assert ev.kind == kind and ev.heat.shape == (28, 28)
    assert ev.heat.max() == pytest.approx(1.0) and ev.heat.min() >= 0
    if kind == "dtsm":
        net = predictor.model.model
        kept_patches = ev.kept.reshape(4, 7, 4, 7)[:, 0, :, 0].sum()  # 7-pixel patches on a 4x4 grid
        if args.get("select_ratio", 1.0) < 1.0:
            assert 0 < kept_patches < 16  # some patches are dropped
        else:
            assert kept_patches == 16  # soft selection (the default): every patch kept, weighted by its score
        assert (ev.heat[~ev.kept] == 0).all()
        assert net.keep_sources is False  # the model is left as it was
    path = predictor.explain(predictor.predict_map(flow_map), tmp_path / "map.png")  # no face: the strain stands in
    assert png_size(path) == EXPLAIN_SIZE

"""The Predictor's model backends (issue 6): PyTorch and onnxruntime agree within 1e-4, ``auto`` needs no export
for a one-off prediction, an ``epir export`` file is used without re-exporting and only for its own checkpoint.

One real export in the whole module (``onnx_run``, ~3-5 s): its graph is also what the file tests load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import epir
import epir.inference.export as export_mod
import epir.inference.predictor as predictor_mod
from epir.cli import main
from epir.data.synthetic import make_clip, random_subject
from epir.inference import ExportError, Predictor, load_checkpoint, save_checkpoint
from epir.inference.export import random_maps

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def onnx_run(ckpt_dir: Path, tmp_path_factory):
    """An onnx-backend Predictor (the model exported in memory), and that graph saved as `epir export` saves it."""
    graphs = []
    real = export_mod.onnx_model

    def spy(*args, **kwargs):
        graphs.append(real(*args, **kwargs))
        return graphs[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_mod, "onnx_model", spy)
        predictor = Predictor.load(ckpt_dir, backend="onnx")
    assert len(graphs) == 1
    file = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save_model(graphs[0], str(file))
    return predictor, file


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return make_clip(random_subject(rng, 64), "positive", rng, n_frames=4)


def no_export(*args, **kwargs):
    raise AssertionError("the model was exported although no export was needed")


def test_torch_and_onnxruntime_agree(ckpt_dir: Path, onnx_run, frames) -> None:
    onnx_predictor, _ = onnx_run
    torch_predictor = Predictor.load(ckpt_dir, backend="torch")
    assert (onnx_predictor.backend, torch_predictor.backend) == ("onnx", "torch")
    assert "exported in memory" in onnx_predictor.backend_note
    maps = random_maps(6, seed=5).numpy()
    for batch in (maps[:1], maps):  # batch 1 and a larger batch
        assert np.abs(onnx_predictor.predict_proba(batch) - torch_predictor.predict_proba(batch)).max() <= 1e-4
    a, b = onnx_predictor.predict(frames, apex=3), torch_predictor.predict(frames, apex=3)
    assert np.array_equal(a.map, b.map) and a.class_name == b.class_name
    assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) <= 1e-4
    assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert (a.backend, b.backend) == ("onnx", "torch")
    assert a.to_dict()["backend"] == "onnx" and a.timings["model"] >= 0


def test_auto_uses_pytorch_without_a_file(ckpt_dir: Path, monkeypatch) -> None:
    """A one-off prediction does not pay for an export (seconds) to save about a millisecond."""
    monkeypatch.setattr(export_mod, "onnx_model", no_export)
    p = Predictor.load(ckpt_dir)
    assert p.requested_backend == "auto" and p.backend == "torch" and "auto" in p.backend_note
    assert p.predict_map(random_maps(1)[0].numpy()).backend == "torch"


def test_an_exported_file_is_used_without_exporting(ckpt_dir: Path, onnx_run, monkeypatch) -> None:
    _, file = onnx_run
    monkeypatch.setattr(export_mod, "onnx_model", no_export)
    for backend in ("auto", "onnx"):
        p = Predictor.load(ckpt_dir, backend=backend, onnx=file)
        assert p.backend == "onnx" and str(file) in p.backend_note
    x = random_maps(3, seed=9).numpy()
    ref = Predictor.load(ckpt_dir, backend="torch").predict_proba(x)
    assert np.abs(p.predict_proba(x) - ref).max() <= 1e-4
    meta = export_mod.onnx_session(file).get_modelmeta().custom_metadata_map
    assert meta["epir.weights_sha256"] == load_checkpoint(ckpt_dir).meta["weights"]["sha256"]


def test_a_file_of_another_checkpoint_is_refused(ckpt_dir: Path, onnx_run, tmp_path: Path) -> None:
    _, file = onnx_run
    ckpt = load_checkpoint(ckpt_dir)
    with torch.no_grad():  # same model, other weights (another training)
        next(ckpt.model.parameters()).add_(0.01)
    other = save_checkpoint(tmp_path / "other", ckpt.model, {k: v for k, v in ckpt.meta.items() if k != "weights"})
    for backend in ("auto", "onnx"):
        with pytest.raises(ExportError, match="exported from other weights"):
            Predictor.load(other, backend=backend, onnx=file)
    edited = shutil.copytree(ckpt_dir, tmp_path / "edited")  # same weights, another input normalisation
    meta = json.loads((edited / "checkpoint.json").read_text())
    meta["input"]["normalization"]["mean"][0] += 1.0
    (edited / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="checkpoint.json was changed"):
        Predictor.load(edited, onnx=file)
    stripped = onnx.load(str(file))  # a file without the hash (an older epir, or not epir)
    keep = [(e.key, e.value) for e in stripped.metadata_props if e.key != "epir.weights_sha256"]
    del stripped.metadata_props[:]
    for key, value in keep:
        entry = stripped.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(stripped, str(tmp_path / "old.onnx"))
    with pytest.raises(ExportError, match="no epir.weights_sha256"):
        Predictor.load(ckpt_dir, onnx=tmp_path / "old.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="cannot load"):
        Predictor.load(ckpt_dir, onnx=tmp_path / "junk.onnx")
    with pytest.raises(ExportError, match="does not exist"):
        Predictor.load(ckpt_dir, onnx=tmp_path / "none.onnx")


def test_bad_backend_arguments(ckpt_dir: Path, onnx_run, monkeypatch) -> None:
    _, file = onnx_run
    with pytest.raises(epir.ConfigError, match="Unknown backend"):
        Predictor.load(ckpt_dir, backend="tensorrt")
    with pytest.raises(epir.ConfigError, match="onnxruntime"):
        Predictor.load(ckpt_dir, backend="torch", onnx=file)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    p = Predictor.load(ckpt_dir, onnx=file)  # auto falls back, and says why
    assert p.backend == "torch" and "onnxruntime is not installed" in p.backend_note
    with pytest.raises(ExportError, match="needs onnxruntime"):
        Predictor.load(ckpt_dir, backend="onnx")


def test_auto_switches_to_onnxruntime_for_a_large_folder(ckpt_dir: Path, onnx_run, frames, tmp_path: Path,
                                                         monkeypatch) -> None:
    import cv2

    _, file = onnx_run
    graph = onnx.load(str(file))
    monkeypatch.setattr(export_mod, "onnx_model", lambda *a, **k: graph)  # the export itself: onnx_run
    monkeypatch.setattr(predictor_mod, "AUTO_ONNX_MIN_CLIPS", 2)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i, f in enumerate(frames):
            cv2.imwrite(str(tmp_path / name / f"img{i + 1}.png"), f)
    p = Predictor.load(ckpt_dir)
    assert p.backend == "torch"
    df = p.predict_folder(tmp_path, apex=3)
    assert p.backend == "onnx" and "auto" in p.backend_note and (df["error"] == "").all()
    ref = Predictor.load(ckpt_dir, backend="torch").predict_folder(tmp_path, apex=3)
    cols = [c for c in df.columns if c.startswith("prob_")]
    assert np.abs(df[cols].to_numpy() - ref[cols].to_numpy()).max() <= 1e-4


def test_cli_backend(ckpt_dir: Path, onnx_run, frames, tmp_path: Path, capsys, monkeypatch) -> None:
    import cv2

    _, file = onnx_run
    monkeypatch.setattr(export_mod, "onnx_model", no_export)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"img{i + 1}.png"), f)
    results = {}
    for backend in ("torch", "onnx"):
        extra = ["--onnx", str(file)] if backend == "onnx" else ["--backend", "torch"]
        code = main(["predict", str(folder), "--checkpoint", str(ckpt_dir), "--apex", "3", "--json", *extra])
        out, err = capsys.readouterr()
        assert code == 0, err
        results[backend] = json.loads(out)  # nothing else on stdout
        assert results[backend]["backend"] == backend
    a, b = (results[k]["probabilities"] for k in ("torch", "onnx"))
    assert max(abs(a[c] - b[c]) for c in a) <= 1e-4
    code = main(["predict", str(folder), "--checkpoint", str(ckpt_dir), "--apex", "3", "--onnx", str(file)])
    out, err = capsys.readouterr()
    assert code == 0 and f"model: onnxruntime, {file}" in out, err
    code = main(["predict", str(folder), "--checkpoint", str(ckpt_dir), "--backend", "torch", "--onnx", str(file)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("epir predict: error:") and "Traceback" not in err

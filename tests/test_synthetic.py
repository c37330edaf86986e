"""The built-in synthetic dataset (epir.data.synthetic)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from epir.data import COMPOSITE_CLASSES, list_datasets, load_dataset
from epir.data import synthetic as syn
from epir.errors import ConfigError
from epir.preprocess import compute_flow

SMALL = {"n_subjects": 4, "clips_per_subject": 6}


def test_shapes_dtypes_and_metadata() -> None:
    ds = syn.synthetic(seed=0, **SMALL)
    n = 4 * 6
    assert len(ds) == n and ds.name == "synthetic"
    assert ds.x.shape == (n, 3, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.shape == (n,) and ds.y.dtype == torch.int64
    assert float(ds.x.min()) >= 0 and float(ds.x.max()) <= 255
    # per-sample, per-channel min-max: every channel spans 0..255
    flat = ds.x.flatten(2)
    assert torch.allclose(flat.amin(-1), torch.zeros(n, 3)) and torch.allclose(flat.amax(-1), torch.full((n, 3), 255.0))
    assert ds.class_names == COMPOSITE_CLASSES
    assert ds.subject_list() == [f"synthetic/s0{i}" for i in range(1, 5)]
    assert set(ds.subject_ids) == {"s01", "s02", "s03", "s04"}
    assert all(s == f"synthetic/{sid}" for s, sid in zip(ds.subjects, ds.subject_ids))
    assert ds.sources == ["synthetic"] * n
    assert ds.clips[:2] == ["s01_c01", "s01_c02"] and len(set(ds.clips)) == n
    assert ds.info["seed"] == 0 and ds.info["flow_method"] == "tvl1" and ds.info["frame_size"] == 64


def test_deterministic_for_a_seed() -> None:
    a = syn.synthetic(seed=3, **SMALL)
    # bypass the in-memory cache: regenerate from scratch
    b = syn._generate.__wrapped__(3, 4, 6, 64, "tvl1", 28)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.clips == b.clips


def test_different_seeds_differ() -> None:
    a = syn.synthetic(seed=0, **SMALL)
    b = syn.synthetic(seed=1, **SMALL)
    assert not torch.equal(a.x, b.x)


def test_subject_does_not_depend_on_n_subjects() -> None:
    a = syn.synthetic(seed=0, **SMALL)
    b = syn.synthetic(seed=0, n_subjects=2, clips_per_subject=6)
    assert torch.equal(a.x[:12], b.x)


def test_class_coverage() -> None:
    ds = syn.synthetic(seed=0, **SMALL)
    y = ds.y.numpy()
    assert set(np.unique(y)) == {0, 1, 2}
    for s in ds.subject_list():
        assert len(set(y[[i for i, t in enumerate(ds.subjects) if t == s]])) >= 2
    # the label draw resembles the composite set's imbalance and always gives two classes
    rng = np.random.default_rng(0)
    labels = np.concatenate([syn.subject_labels(rng, 15) for _ in range(200)])
    frac = np.bincount(labels, minlength=3) / len(labels)
    assert np.allclose(frac, syn.CLASS_PROBS, atol=0.04)
    assert all(len(set(syn.subject_labels(rng, 2))) == 2 for _ in range(50))


def test_returns_fresh_copies() -> None:
    a = syn.synthetic(seed=0, **SMALL)
    a.x.zero_()
    a.subjects.clear()
    b = syn.synthetic(seed=0, **SMALL)
    assert float(b.x.max()) == 255 and len(b.subjects) == 24


def test_registered_and_loadable() -> None:
    assert "synthetic" in list_datasets()
    ds = load_dataset("synthetic", seed=0, n_subjects=2, clips_per_subject=3)
    assert len(ds) == 6 and ds.name == "synthetic"
    ds_root = load_dataset("synthetic", root="/ignored", seed=0, n_subjects=2, clips_per_subject=3)
    assert torch.equal(ds.x, ds_root.x)


def test_other_flow_method() -> None:
    ds = syn.synthetic(seed=0, n_subjects=2, clips_per_subject=3, flow_method="dis", map_size=14)
    assert ds.x.shape == (6, 3, 14, 14) and ds.info["flow_method"] == "dis"


@pytest.mark.parametrize(
    "kwargs",
    [{"clips_per_subject": 1}, {"n_subjects": 0}, {"flow_method": "lk"}, {"frame_size": 8}],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        syn.synthetic(seed=0, **{**SMALL, **kwargs})


def test_render_face_and_clip() -> None:
    rng = np.random.default_rng(0)
    style = syn.random_subject(rng, size=256)
    img = syn.render_face(style)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert img.std() > 20  # not a blank image
    np.testing.assert_array_equal(img, syn.render_face(style, {}))  # noise-free rendering is deterministic
    frames = syn.make_clip(syn.random_subject(rng), "surprise", rng, n_frames=4)
    assert len(frames) == 4 and all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    with pytest.raises(ConfigError):
        syn.make_clip(style, "angry", rng)
    with pytest.raises(ConfigError):
        syn.render_face(style, {"AU99": 1.0})


def test_action_unit_moves_the_right_place() -> None:
    """AU12 (lip-corner pull) moves the mouth corners out and up, and leaves the brows alone."""
    style = syn.random_subject(np.random.default_rng(1), size=64)
    onset = syn.render_face(style)
    apex = syn.render_face(style, {"AU12": 1.5})
    flow = compute_flow(onset, apex, "tvl1", params=syn.TVL1_PARAMS)
    cx, cy = style.center
    my = int(round(cy + style.mouth_y))
    for side in (-1, 1):
        x = int(round(cx + side * style.mouth_w))
        win = flow[my - 2:my + 3, x - 2:x + 3]
        assert side * win[..., 0].mean() > 0.2  # outwards
        assert win[..., 1].mean() < -0.2  # upwards
    by = int(round(cy + style.eye_y - style.brow_gap))
    assert np.abs(flow[by - 2:by + 3]).mean() < 0.05

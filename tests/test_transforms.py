"""Input transforms: HTNet's four-region mosaic exactly as the official code cuts it, landmark clipping and
its report, and dataset-level application."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from epir.data.transforms import (
    DEFAULT_LANDMARKS,
    apply_input_transform,
    clip_landmarks,
    mosaic,
    smooth_maps,
    transform_maps,
)
from epir.errors import ConfigError, DatasetError


def coordinate_map() -> np.ndarray:
    """(3, 28, 28): channel 0 holds row * 100 + col, channel 1 the row, channel 2 the column."""
    rows, cols = np.mgrid[0:28, 0:28]
    return np.stack([rows * 100 + cols, rows, cols]).astype(np.float32)


def official_mosaic(flow_hwc: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The official code's steps on an (H, W, C) image: clip, astype(int), crop, hconcat, vconcat."""
    points = landmarks.copy()
    points[points < 7] = 7
    points[points > 21] = 21
    points = points.astype(int)
    crops = [flow_hwc[x - 7 : x + 7, y - 7 : y + 7] for x, y in points]
    return np.concatenate([np.concatenate([crops[0], crops[1]], 1), np.concatenate([crops[3], crops[4]], 1)], 0)


def test_default_mosaic_tiles_are_the_expected_crops() -> None:
    flow = coordinate_map()
    out = mosaic(flow)
    assert out.shape == (3, 28, 28) and out.dtype == flow.dtype
    # Defaults truncate to (9, 11), (21, 10), (15, 17), (10, 22), (20, 22); 21.4, 22.1 and 22.3 clip to 21.
    # Tiles: top-left rows 2..15 cols 4..17; top-right rows 14..27 cols 3..16;
    # bottom-left rows 3..16 cols 14..27; bottom-right rows 13..26 cols 14..27. The nose (15, 17) is unused.
    expected = {(0, 0): (2, 4), (0, 1): (14, 3), (1, 0): (3, 14), (1, 1): (13, 14)}
    for (ti, tj), (r0, c0) in expected.items():
        tile = out[0, ti * 14 : ti * 14 + 14, tj * 14 : tj * 14 + 14]
        rows, cols = np.mgrid[r0 : r0 + 14, c0 : c0 + 14]
        np.testing.assert_array_equal(tile, rows * 100 + cols, err_msg=f"tile {(ti, tj)}")
    np.testing.assert_array_equal(out.transpose(1, 2, 0), official_mosaic(flow.transpose(1, 2, 0), DEFAULT_LANDMARKS))


def test_mosaic_of_tensor_batches_and_per_sample_landmarks() -> None:
    flow = torch.from_numpy(np.stack([coordinate_map(), coordinate_map() + 1]))
    out = mosaic(flow)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 28, 28)
    torch.testing.assert_close(out[0], torch.from_numpy(mosaic(coordinate_map())))
    landmarks = np.stack([DEFAULT_LANDMARKS, np.full((5, 2), 14.0)])
    per_sample = mosaic(flow, landmarks)
    torch.testing.assert_close(per_sample[0], out[0])
    centre = flow[1, :, 7:21, 7:21]  # every point at (14, 14): four copies of the centre crop
    torch.testing.assert_close(per_sample[1], centre.repeat(1, 2, 2))


def test_landmarks_outside_the_image_are_clipped_and_reported() -> None:
    landmarks = np.array([[-3.0, 30.5], [7.0, 21.0], [6.99, 21.01], [12.7, 0.2], [40.0, 14.9]])
    points, clipped = clip_landmarks(landmarks)
    np.testing.assert_array_equal(points, [[7, 21], [7, 21], [7, 21], [12, 7], [21, 14]])
    np.testing.assert_array_equal(
        clipped, [[True, True], [False, False], [True, True], [False, True], [True, False]]
    )
    flow = coordinate_map()
    np.testing.assert_array_equal(
        mosaic(flow, landmarks).transpose(1, 2, 0), official_mosaic(flow.transpose(1, 2, 0), landmarks)
    )
    _, default_clipped = clip_landmarks(DEFAULT_LANDMARKS)
    assert default_clipped.sum() == 3  # the official fallback points clip too: right eye x, both mouth y


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="28x28"):
        mosaic(np.zeros((3, 32, 32)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 5, 2\)"):
        mosaic(np.zeros((3, 28, 28)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same N"):
        mosaic(np.zeros((2, 3, 28, 28)), np.zeros((3, 5, 2)))


def test_unknown_transform_name_lists_the_valid_ones(fake_dataset) -> None:
    with pytest.raises(ConfigError, match=r"'mosiac'.*Did you mean 'mosaic'.*none, mosaic, smooth"):
        apply_input_transform(fake_dataset, "mosiac")


def test_none_is_the_identity(fake_dataset) -> None:
    ds, report = apply_input_transform(fake_dataset, "none")
    assert ds is fake_dataset and report == {"input_transform": "none"}


def test_apply_mosaic_keeps_labels_and_subjects(fake_dataset) -> None:
    ds, report = apply_input_transform(fake_dataset, "mosaic")
    assert ds.x.shape == fake_dataset.x.shape and not torch.equal(ds.x, fake_dataset.x)
    torch.testing.assert_close(ds.x, mosaic(fake_dataset.x))
    assert torch.equal(ds.y, fake_dataset.y)
    assert (ds.subjects, ds.subject_ids, ds.clips, ds.sources) == (
        fake_dataset.subjects, fake_dataset.subject_ids, fake_dataset.clips, fake_dataset.sources
    )
    assert report["input_transform"] == "mosaic"
    assert report["landmarks"] == "official fixed defaults (flow-only data)"
    assert report["clipped"] == [
        "right eye x 21.3962 -> 21", "left mouth corner y 22.1212 -> 21", "right mouth corner y 22.2558 -> 21"
    ]
    assert ds.info["input_transform"] == report and "input_transform" not in fake_dataset.info


def test_apply_mosaic_uses_per_sample_landmarks(fake_dataset) -> None:
    n = len(fake_dataset)
    landmarks = np.tile(np.full((5, 2), 14.0), (n, 1, 1))
    landmarks[0, 0] = [3.0, 14.0]  # one sample's left eye x clips
    fake_dataset.info["landmarks"] = landmarks
    ds, report = apply_input_transform(fake_dataset, "mosaic")
    assert report["landmarks"].startswith("per-sample")
    assert report["clipped"] == [f"left eye x: 1 of {n} samples"]
    torch.testing.assert_close(ds.x[1], fake_dataset.x[1, :, 7:21, 7:21].repeat(1, 2, 2))
    fake_dataset.info["landmarks"] = landmarks[:-1]
    with pytest.raises(DatasetError, match=r"\(N, 5, 2\)"):
        apply_input_transform(fake_dataset, "mosaic")
    landmarks[2, 1, 0] = np.nan
    fake_dataset.info["landmarks"] = landmarks
    with pytest.raises(DatasetError, match="non-finite"):
        apply_input_transform(fake_dataset, "mosaic")


def test_smooth_blurs_each_map_and_stores_it_as_the_composite_set_does(fake_dataset) -> None:
    """``smooth``: a Gaussian blur (sigma 1 px) per channel, then each channel of each map min-max to 0-255 in
    whole numbers; per map (a batch is its maps one by one), and differentiable for gradient saliency."""
    x = torch.zeros(2, 3, 28, 28)
    x[0, 0, 14, 14] = 255.0  # a spike spreads to its neighbours
    x[0, 1] = torch.arange(28.0).repeat(28, 1)  # a ramp stays monotone
    x[1] = torch.rand(3, 28, 28) * 255
    y = smooth_maps(x)
    assert y.shape == x.shape and torch.equal(y, y.round())
    assert y[0, 0, 14, 14] == 255 and 0 < y[0, 0, 14, 15] < 255 and y[0, 0, 0, 0] == 0
    assert (y[0, 1].diff(dim=-1) >= 0).all() and y[0, 1, :, 0].eq(0).all() and y[0, 1, :, -1].eq(255).all()
    assert y[0, 2].eq(0).all()  # a flat channel stays flat
    assert torch.equal(y.amax(dim=(-2, -1))[1], torch.full((3,), 255.0))
    assert torch.equal(torch.cat([smooth_maps(x[:1]), smooth_maps(x[1:])]), y)
    assert y[1].std() < x[1].std() * 255 / (x[1].amax() - x[1].amin())  # smoother than the input renormalised
    g = x.clone().requires_grad_(True)
    smooth_maps(g)[1].sum().backward()
    assert g.grad is not None and g.grad[1].abs().sum() > 0  # the rounding passes gradients through
    ds, report = apply_input_transform(fake_dataset, "smooth")
    assert torch.equal(ds.x, smooth_maps(fake_dataset.x)) and torch.equal(ds.y, fake_dataset.y)
    assert report["input_transform"] == "smooth" and report["sigma"] == 1.0 and ds.info["input_transform"] == report
    torch.testing.assert_close(transform_maps("smooth", fake_dataset.x), ds.x)
    assert transform_maps("none", x) is x
    with pytest.raises(ConfigError, match="Did you mean 'smooth'"):
        transform_maps("smoth", x)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        smooth_maps(x[0])

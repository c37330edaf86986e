"""Input transforms applied to a whole :class:`FlowDataset` before LOSO: ``apply_input_transform(ds, name)``;
:func:`transform_maps` applies one to a batch of maps (what a checkpoint puts in front of its network).

``smooth`` is a smoother flow (:func:`smooth_maps`): a Gaussian blur of sigma 1 px on every channel, then each
channel of each map min-max normalised to 0-255 again, as the composite set's maps are stored. It is round 15's
``smooth`` alteration of ``benchmarks/flow_robustness.py``, as a switch (``data.input_transform=smooth``, the
``smooth`` lever of ``epir ablate``); not part of any recipe (docs/epir-design.md, round 16).

``mosaic`` is HTNet's four-region input (Wang et al., Neurocomputing 2024), as its official code builds it:
five facial landmarks (left eye, right eye, nose, left and right mouth corners) on the 28x28 face, every
coordinate clipped to [7, 21] and truncated to an int, a 14x14 crop ``flow[x-7:x+7, y-7:y+7]`` around
each point, and the 2x2 tiling ``[[crop 0, crop 1], [crop 3, crop 4]]`` (the nose crop is unused).
Note that the official code indexes *rows* with the landmark's x coordinate; that transposition is kept
so that the official weights see what they were trained on. Any model can be given this input.

When the official face detector found no face it silently used fixed landmarks; here those fixed points are
:data:`DEFAULT_LANDMARKS`, used when a dataset has no per-sample landmarks (the MEGC2019 composite set is
flow-only), and the report returned with the dataset says so.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from epir.data.base import FlowDataset
from epir.errors import ConfigError, DatasetError, did_you_mean

#: The official code's fallback landmarks (x, y) on a 28x28 face: left eye, right eye, nose, left mouth corner,
#: right mouth corner.
DEFAULT_LANDMARKS = np.array(
    [
        [9.528073, 11.062551],
        [21.396168, 10.919773],
        [15.380184, 17.380562],
        [10.255435, 22.121233],
        [20.583706, 22.25584],
    ]
)
LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")
MOSAIC_SIZE = 28  # the flow maps the official code crops, and the mosaic it builds
HALF = 7  # half the side of each 14x14 crop
#: The 2x2 tiling of the crops, by landmark index: top row eyes, bottom row mouth corners; the nose is unused.
TILES = ((0, 1), (3, 4))

Flow = TypeVar("Flow", np.ndarray, torch.Tensor)


def clip_landmarks(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip every coordinate to [7, 21] and truncate it to an int, as the official code does.

    Args:
        landmarks: (x, y) points, shape (..., 5, 2).

    Returns:
        The integer coordinates, shape (..., 5, 2), and a boolean mask of the same shape: which coordinates
        were outside [7, 21] and were clipped.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape[-2:] != (5, 2):
        raise ValueError(f"landmarks must have shape (..., 5, 2) (five (x, y) points), got {points.shape}.")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or inf; give five finite (x, y) points per sample.")
    lo, hi = HALF, MOSAIC_SIZE - HALF
    clipped = (points < lo) | (points > hi)
    return np.clip(points, lo, hi).astype(np.int64), clipped


def _tile(flow: Flow, points: np.ndarray) -> Flow:
    """flow: (..., C, 28, 28); points: integer (5, 2). Returns the (..., C, 28, 28) mosaic."""
    cat = np.concatenate if isinstance(flow, np.ndarray) else torch.cat
    crops = [flow[..., x - HALF : x + HALF, y - HALF : y + HALF] for x, y in points.tolist()]
    return cat([cat([crops[i] for i in row], -1) for row in TILES], -2)


def mosaic(flow: Flow, landmarks: np.ndarray | None = None) -> Flow:
    """HTNet's four-region mosaic of 28x28 flow maps.

    Args:
        flow: flow maps, shape (3, 28, 28) or (N, 3, 28, 28) (any channel count).
        landmarks: (x, y) points in the order left eye, right eye, nose, left mouth corner, right mouth
            corner: shape (5, 2) for every map, or (N, 5, 2), one set per map. None: the official fixed
            :data:`DEFAULT_LANDMARKS`. Clipped to [7, 21] and truncated (see :func:`clip_landmarks`).

    Returns:
        The mosaics, same type, dtype and shape as ``flow``: crops ``flow[:, x-7:x+7, y-7:y+7]`` (x indexes
        rows, as in the official code) tiled as [[left eye, right eye], [left mouth, right mouth]].
    """
    if flow.ndim not in (3, 4) or tuple(flow.shape[-2:]) != (MOSAIC_SIZE, MOSAIC_SIZE):
        raise ValueError(
            f"mosaic expects flow maps of shape (C, 28, 28) or (N, C, 28, 28), got {tuple(flow.shape)}; "
            "the official landmarks and crops are defined on 28x28 maps."
        )
    points, _ = clip_landmarks(DEFAULT_LANDMARKS if landmarks is None else landmarks)
    if points.ndim == 2:
        return _tile(flow, points)
    if flow.ndim != 4 or points.shape[0] != flow.shape[0]:
        raise ValueError(
            f"per-sample landmarks of shape {points.shape} need flow maps (N, C, 28, 28) with the same N, "
            f"got {tuple(flow.shape)}."
        )
    out = [_tile(flow[i], p) for i, p in enumerate(points)]
    return np.stack(out) if isinstance(flow, np.ndarray) else torch.stack(out)


#: ``smooth``: the Gaussian's sigma (px) and its kernel's side.
SMOOTH_SIGMA, SMOOTH_KERNEL = 1.0, 5


def renormalise_maps(x: torch.Tensor) -> torch.Tensor:
    """Every channel of every map min-max normalised to 0-255 and rounded, as the composite set's maps are stored
    (each of their channels spans exactly 0-255 in whole numbers); a flat channel becomes 0.

    The rounding passes gradients straight through (its value is the rounded one), so that gradient saliency
    (``epir explain``) still sees through an input transform that ends with it.
    """
    low = x.amin(dim=(-2, -1), keepdim=True)
    span = (x.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
    y = (x - low) / span * 255.0
    return y.round().detach() + (y - y.detach())  # exactly the rounded value; the gradient is y's


def smooth_maps(x: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """A smoother flow: each channel of maps ``x`` (N, C, H, W) at 0-255 blurred by a Gaussian of ``sigma`` px
    (:data:`SMOOTH_KERNEL` wide, reflected border), then min-max normalised again (:func:`renormalise_maps`).

    Per map, with no statistic of other samples, so it is the same in LOSO, ``epir train`` and ``epir predict``.
    ``data.input_transform=smooth`` applies it to every map, and ``benchmarks/flow_robustness.py`` uses it as
    its ``smooth`` alteration.
    """
    if x.ndim != 4:
        raise ValueError(f"smooth_maps expects flow maps (N, C, H, W), got shape {tuple(x.shape)}.")
    r = torch.arange(SMOOTH_KERNEL, dtype=x.dtype, device=x.device) - SMOOTH_KERNEL // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, SMOOTH_KERNEL, SMOOTH_KERNEL)
    padded = F.pad(x, (SMOOTH_KERNEL // 2,) * 4, mode="reflect")
    return renormalise_maps(F.conv2d(padded, kernel, groups=x.shape[1]))


def transform_maps(name: str, x: torch.Tensor) -> torch.Tensor:
    """Input transform ``name`` on a batch of maps (N, C, 28, 28) at 0-255 (the mosaic around the official fixed
    landmarks): what :class:`~epir.inference.InferenceModel` puts in front of a network.
    """
    if name == "mosaic":
        return mosaic(x)
    if name == "smooth":
        return smooth_maps(x)
    if name == "none":
        return x
    raise _unknown(name)


def _unknown(name: str) -> ConfigError:
    """The error for an input transform this epir does not know."""
    return ConfigError(f"Unknown input transform {name!r}.{did_you_mean(name, INPUT_TRANSFORMS)} "
                       f"Valid names: {', '.join(INPUT_TRANSFORMS)}.")


# --------------------------------------------------------------------------------------------------------
# Dataset-level transforms
# --------------------------------------------------------------------------------------------------------


def _describe_clipping(raw: np.ndarray, clipped: np.ndarray) -> list[str]:
    """Human-readable list of clipped coordinates: per value for one landmark set, as counts per sample set."""
    out = []
    for p, c in zip(*np.nonzero(clipped.reshape(-1, 5, 2).any(axis=0))):
        name = f"{LANDMARK_NAMES[p]} {'xy'[c]}"
        if raw.ndim == 2:
            value = float(raw[p, c])
            out.append(f"{name} {value:g} -> {int(np.clip(value, HALF, MOSAIC_SIZE - HALF))}")
        else:
            out.append(f"{name}: {int(clipped[:, p, c].sum())} of {len(raw)} samples")
    return out


def _none(dataset: FlowDataset) -> tuple[FlowDataset, dict[str, Any]]:
    return dataset, {"input_transform": "none"}


def _mosaic(dataset: FlowDataset) -> tuple[FlowDataset, dict[str, Any]]:
    raw = dataset.info.get("landmarks")
    if raw is None:
        raw, source = DEFAULT_LANDMARKS, "official fixed defaults (flow-only data)"
    else:
        raw, source = np.asarray(raw, dtype=np.float64), "per-sample (dataset.info['landmarks'])"
        if raw.shape != (len(dataset), 5, 2):
            raise DatasetError(
                f"dataset.info['landmarks'] must have shape (N, 5, 2) = ({len(dataset)}, 5, 2), got {raw.shape}."
            )
        bad = ~np.isfinite(raw).all(axis=(1, 2))
        if bad.any():
            clips = [dataset.clips[i] for i in np.nonzero(bad)[0][:5]]
            raise DatasetError(
                f"dataset.info['landmarks'] has non-finite points for {int(bad.sum())} samples (e.g. {clips}); "
                "fill them in preprocessing (the official code's silent fallback is DEFAULT_LANDMARKS)."
            )
    _, clipped = clip_landmarks(raw)
    x = mosaic(dataset.x, raw)
    report = {"input_transform": "mosaic", "landmarks": source, "clipped": _describe_clipping(raw, clipped)}
    return replace(dataset, x=x, info={**dataset.info, "input_transform": report}), report


def _smooth(dataset: FlowDataset) -> tuple[FlowDataset, dict[str, Any]]:
    report = {"input_transform": "smooth", "sigma": SMOOTH_SIGMA, "kernel": SMOOTH_KERNEL,
              "then": "each channel of each map min-max normalised to 0-255 and rounded"}
    x = smooth_maps(dataset.x.float()).to(dataset.x.dtype)
    return replace(dataset, x=x, info={**dataset.info, "input_transform": report}), report


#: Every input transform by name: ``fn(dataset) -> (dataset, report)``.
INPUT_TRANSFORMS: dict[str, Callable[[FlowDataset], tuple[FlowDataset, dict[str, Any]]]] = {
    "none": _none,
    "mosaic": _mosaic,
    "smooth": _smooth,
}


def apply_input_transform(dataset: FlowDataset, name: str) -> tuple[FlowDataset, dict[str, Any]]:
    """Apply input transform ``name`` to every sample of ``dataset``.

    Args:
        dataset: flow maps (N, 3, 28, 28); per-sample landmarks, when present, in ``info["landmarks"]``,
            shape (N, 5, 2).
        name: ``none`` (the whole-face map, unchanged), ``mosaic`` (HTNet's four-region input) or ``smooth``
            (:func:`smooth_maps`: a Gaussian blur of sigma 1 px, each channel min-max normalised again).

    Returns:
        The transformed dataset (labels, subjects and clips unchanged) and a YAML-friendly report of what was
        done, e.g. ``{"input_transform": "mosaic", "landmarks": "official fixed defaults (flow-only data)",
        "clipped": ["right eye x 21.3962 -> 21", ...]}``.
    """
    if name not in INPUT_TRANSFORMS:
        raise _unknown(name)
    return INPUT_TRANSFORMS[name](dataset)

"""Dense optical flow, optical strain and the (3, size, size) flow maps every epir model reads.

The pipeline is the one used for the MEGC2019 composite set (and by STSTNet, OFF-ApexNet, ...):

1. :func:`compute_flow`: dense flow from the onset frame to the apex frame (TV-L1 by default);
2. :func:`optical_strain`: magnitude of the infinitesimal strain tensor of that flow;
3. :func:`flow_to_map`: u, v and strain resized to ``size x size`` (``cv2.INTER_AREA``), then each
   channel min-max normalised to 0-255 on its own (per sample).

:func:`flow_map` chains the three.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

from epir.errors import ConfigError

#: Flow methods understood by :func:`compute_flow`.
FLOW_METHODS = ("tvl1", "farneback", "dis")

#: Parameters of ``cv2.calcOpticalFlowFarneback`` used by ``method="farneback"``: the values of the
#: OpenCV tutorial (3-level pyramid halving the size, 15 px averaging window, 3 iterations, 5 px
#: polynomial neighbourhood with sigma 1.2), which recover the 1-2 px motions of micro-expressions
#: on 64-256 px face crops. Override any of them with ``params``.
FARNEBACK_PARAMS: dict[str, Any] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}

# ``params`` keys of method "tvl1" -> setter of cv2.optflow.DualTVL1OpticalFlow.
_TVL1_SETTERS = {
    "tau": "setTau",
    "lambda": "setLambda",
    "theta": "setTheta",
    "nscales": "setScalesNumber",
    "warps": "setWarpingsNumber",
    "epsilon": "setEpsilon",
    "inner_iterations": "setInnerIterations",
    "outer_iterations": "setOuterIterations",
    "scale_step": "setScaleStep",
    "gamma": "setGamma",
    "median_filtering": "setMedianFiltering",
}

# ``params`` keys of method "dis" -> setter of cv2.DISOpticalFlow ("preset" is handled apart).
_DIS_SETTERS = {
    "finest_scale": "setFinestScale",
    "patch_size": "setPatchSize",
    "patch_stride": "setPatchStride",
    "gradient_descent_iterations": "setGradientDescentIterations",
    "variational_refinement_iterations": "setVariationalRefinementIterations",
    "variational_refinement_alpha": "setVariationalRefinementAlpha",
    "variational_refinement_delta": "setVariationalRefinementDelta",
    "variational_refinement_gamma": "setVariationalRefinementGamma",
    "use_mean_normalization": "setUseMeanNormalization",
    "use_spatial_propagation": "setUseSpatialPropagation",
}


def to_gray(frame: np.ndarray) -> np.ndarray:
    """Convert a frame to the 8-bit single-channel image the OpenCV flow methods expect.

    Args:
        frame: gray (H, W) or (H, W, 1), BGR (H, W, 3) or BGRA (H, W, 4). uint8, or a float/int
            array on the 0-255 scale (rounded and clipped to uint8).

    Returns:
        uint8 array of shape (H, W).

    Raises:
        ConfigError: the array is not 2-D or 3-D with 1, 3 or 4 channels.
    """
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64)), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_BGR2GRAY)
    if a.ndim == 3 and a.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_BGRA2GRAY)
    raise ConfigError(
        f"Expected a gray (H, W) or BGR (H, W, 3) frame, got an array of shape {tuple(np.shape(frame))}."
    )


def _apply_setters(obj: Any, params: Mapping[str, Any], setters: Mapping[str, str], method: str) -> None:
    for key, value in params.items():
        if key not in setters:
            raise ConfigError(
                f"Unknown {method} flow parameter {key!r}. Valid parameters: {', '.join(sorted(setters))}."
            )
        getattr(obj, setters[key])(value)


def _tvl1(prev: np.ndarray, nxt: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    # Creating the object costs ~0.2 ms (vs 10-80 ms for calc() on a 64x64 pair), so no cache:
    # a fresh object per call keeps compute_flow free of shared state and thread-safe.
    if not hasattr(cv2, "optflow"):
        raise ConfigError("TV-L1 flow needs OpenCV's contrib modules (cv2.optflow), which this OpenCV lacks: "
                          "pip install opencv-contrib-python-headless in place of opencv-python(-headless), "
                          "or choose flow_method='farneback'.")
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    _apply_setters(tvl1, params, _TVL1_SETTERS, "tvl1")
    return tvl1.calc(prev, nxt, None)


def _farneback(prev: np.ndarray, nxt: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    unknown = set(params) - set(FARNEBACK_PARAMS)
    if unknown:
        raise ConfigError(
            f"Unknown farneback flow parameter(s) {sorted(unknown)}. "
            f"Valid parameters: {', '.join(FARNEBACK_PARAMS)}."
        )
    p = {**FARNEBACK_PARAMS, **params}
    return cv2.calcOpticalFlowFarneback(
        prev, nxt, None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"], p["poly_n"],
        p["poly_sigma"], p["flags"],
    )


def _dis(prev: np.ndarray, nxt: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    params = dict(params)
    dis = cv2.DISOpticalFlow_create(params.pop("preset", cv2.DISOPTICAL_FLOW_PRESET_MEDIUM))
    _apply_setters(dis, params, _DIS_SETTERS, "dis")
    return dis.calc(prev, nxt, None)


_METHODS: dict[str, Callable[[np.ndarray, np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "tvl1": _tvl1,
    "farneback": _farneback,
    "dis": _dis,
}


def compute_flow(
    onset: np.ndarray,
    apex: np.ndarray,
    method: str = "tvl1",
    *,
    params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Dense optical flow from the onset frame to the apex frame.

    Args:
        onset: onset frame, uint8 gray (H, W) or BGR (H, W, 3) (colour is converted to gray).
        apex: apex frame, same height and width as ``onset``.
        method: ``"tvl1"`` (``cv2.optflow.DualTVL1OpticalFlow`` with OpenCV's default parameters,
            the usual choice in micro-expression work), ``"farneback"``
            (``cv2.calcOpticalFlowFarneback`` with :data:`FARNEBACK_PARAMS`) or ``"dis"``
            (``cv2.DISOpticalFlow`` with ``DISOPTICAL_FLOW_PRESET_MEDIUM``).
        params: optional overrides of the method's parameters. tvl1: ``tau``, ``lambda``,
            ``theta``, ``nscales``, ``warps``, ``epsilon``, ``inner_iterations``,
            ``outer_iterations``, ``scale_step``, ``gamma``, ``median_filtering``;
            farneback: the keys of :data:`FARNEBACK_PARAMS`; dis: ``preset`` and the snake_case
            names of the ``cv2.DISOpticalFlow`` setters (``finest_scale``, ``patch_size``, ...).

    Returns:
        float32 array of shape (H, W, 2): ``[..., 0]`` is u (horizontal, +x to the right) and
        ``[..., 1]`` is v (vertical, +y downwards), in pixels, such that the content at (x, y) in
        ``onset`` is found near (x + u, y + v) in ``apex``.

    Raises:
        ConfigError: unknown method or parameter, or frames of different height/width.
    """
    if method not in _METHODS:
        raise ConfigError(f"Unknown flow method {method!r}. Valid methods: {', '.join(FLOW_METHODS)}.")
    prev, nxt = to_gray(onset), to_gray(apex)
    if prev.shape != nxt.shape:
        raise ConfigError(
            f"Onset and apex frames must have the same size, got onset {tuple(np.shape(onset))} "
            f"and apex {tuple(np.shape(apex))}."
        )
    flow = _METHODS[method](prev, nxt, params or {})
    return np.asarray(flow, dtype=np.float32)


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Magnitude of the optical strain (infinitesimal strain tensor) of a flow field.

    With ``e_xx = du/dx``, ``e_yy = dv/dy`` and ``e_xy = e_yx = (du/dy + dv/dx) / 2`` (central
    differences, ``np.gradient``), the strain magnitude is
    ``sqrt(e_xx**2 + e_yy**2 + e_xy**2 + e_yx**2) = sqrt(e_xx**2 + e_yy**2 + 2 * e_xy**2)``, the
    definition of Liong et al. and STSTNet. A pure translation has zero strain.

    Args:
        flow: array of shape (H, W, 2), channels u, v (see :func:`compute_flow`).

    Returns:
        float32 array of shape (H, W), non-negative.
    """
    f = np.asarray(flow, dtype=np.float32)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ConfigError(f"Expected a flow field of shape (H, W, 2), got {f.shape}.")
    u, v = f[..., 0], f[..., 1]
    du_dy, du_dx = np.gradient(u)  # axis 0 is y, axis 1 is x
    dv_dy, dv_dx = np.gradient(v)
    e_xy = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx**2 + dv_dy**2 + 2.0 * e_xy**2).astype(np.float32)


def minmax_255(channel: np.ndarray) -> np.ndarray:
    """Min-max normalise one channel to 0-255.

    Args:
        channel: array of any shape (typically (H, W)).

    Returns:
        float32 array of the same shape with min 0 and max 255; a constant (or non-finite-range)
        channel gives all zeros, never NaN.
    """
    c = np.asarray(channel, dtype=np.float32)
    lo, hi = float(np.min(c)), float(np.max(c))
    rng = hi - lo
    if not np.isfinite(rng) or rng <= 0.0:
        return np.zeros_like(c, dtype=np.float32)
    return np.clip((c - lo) * (255.0 / rng), 0.0, 255.0).astype(np.float32)


def flow_to_map(flow: np.ndarray, size: int = 28, strain: np.ndarray | None = None) -> np.ndarray:
    """The (3, size, size) model input of a flow field: u, v, optical strain, each 0-255.

    Order of operations (that of the MEGC2019 composite set): the strain is computed at the flow's
    full resolution (unless given), then the raw u, v and strain are resized to ``size x size``
    with ``cv2.INTER_AREA``, and only then is each channel min-max normalised to 0-255 on its own.

    Args:
        flow: array of shape (H, W, 2), channels u, v in pixels.
        size: output height and width (28 for the composite set).
        strain: optional precomputed strain of shape (H, W); defaults to ``optical_strain(flow)``.

    Returns:
        float32 array of shape (3, size, size), channels u, v, strain, each in [0, 255].
    """
    f = np.asarray(flow, dtype=np.float32)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ConfigError(f"Expected a flow field of shape (H, W, 2), got {f.shape}.")
    if int(size) < 1:
        raise ConfigError(f"Map size must be a positive integer, got {size!r}.")
    s = optical_strain(f) if strain is None else np.asarray(strain, dtype=np.float32)
    if s.shape != f.shape[:2]:
        raise ConfigError(f"Strain of shape {s.shape} does not match flow of shape {f.shape}.")
    dsize = (int(size), int(size))
    channels = (f[..., 0], f[..., 1], s)
    out = [minmax_255(cv2.resize(np.ascontiguousarray(c), dsize, interpolation=cv2.INTER_AREA)) for c in channels]
    return np.stack(out).astype(np.float32)


def flow_map(
    onset: np.ndarray,
    apex: np.ndarray,
    method: str = "tvl1",
    size: int = 28,
    *,
    params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Onset and apex frames to the (3, size, size) flow map: ``flow_to_map(compute_flow(...))``.

    Args:
        onset: onset frame, uint8 gray (H, W) or BGR (H, W, 3).
        apex: apex frame of the same height and width.
        method: flow method, see :func:`compute_flow`.
        size: output height and width.
        params: flow parameter overrides, see :func:`compute_flow`.

    Returns:
        float32 array of shape (3, size, size), channels u, v, strain, each in [0, 255].
    """
    return flow_to_map(compute_flow(onset, apex, method, params=params), size=size)


__all__ = [
    "FARNEBACK_PARAMS",
    "FLOW_METHODS",
    "compute_flow",
    "flow_map",
    "flow_to_map",
    "minmax_255",
    "optical_strain",
    "to_gray",
]

"""Optical flow, optical strain and flow maps (epir.preprocess.flow)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from epir.errors import ConfigError
from epir.preprocess import compute_flow, flow_map, flow_to_map, minmax_255, optical_strain
from epir.preprocess.flow import FLOW_METHODS

SIZE = 64


def textured(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A smooth random texture, uint8 (size, size)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.5)
    img = 128 + 40 * img / img.std()
    return np.clip(img, 0, 255).astype(np.uint8)


def shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``img`` translated by (dx, dy) pixels (content moves right/down for positive values)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, img.shape[1::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def expanded(img: np.ndarray, amount: float, sigma: float = 8.0) -> np.ndarray:
    """``img`` with a local radial expansion around its centre (peak displacement ~``amount`` px)."""
    h, w = img.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)) * amount / sigma
    # inverse map: the pixel at p comes from p - d(p), with d pointing away from the centre
    return cv2.remap(img, xs - (xs - cx) * g, ys - (ys - cy) * g, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("method", FLOW_METHODS)
@pytest.mark.parametrize("dx,dy", [(1.5, -1.0), (-0.8, 1.6)])
def test_translation_is_recovered(method: str, dx: float, dy: float) -> None:
    a = textured()
    flow = compute_flow(a, shifted(a, dx, dy), method)
    assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
    inner = flow[12:-12, 12:-12]
    assert abs(float(inner[..., 0].mean()) - dx) < 0.3
    assert abs(float(inner[..., 1].mean()) - dy) < 0.3


def test_bgr_input_is_converted_to_gray() -> None:
    a = textured()
    b = shifted(a, 1.0, 0.5)
    gray = compute_flow(a, b, "dis")
    bgr = compute_flow(cv2.cvtColor(a, cv2.COLOR_GRAY2BGR), cv2.cvtColor(b, cv2.COLOR_GRAY2BGR), "dis")
    np.testing.assert_array_equal(gray, bgr)


def test_params_override_and_unknown_param() -> None:
    a = textured()
    flow = compute_flow(a, shifted(a, 1.0, 0.0), "tvl1", params={"epsilon": 0.05})
    assert abs(float(flow[12:-12, 12:-12, 0].mean()) - 1.0) < 0.3
    with pytest.raises(ConfigError, match="epsilonn"):
        compute_flow(a, a, "tvl1", params={"epsilonn": 0.05})
    with pytest.raises(ConfigError, match="window"):
        compute_flow(a, a, "farneback", params={"window": 9})


def test_unknown_method_raises_config_error() -> None:
    a = textured()
    with pytest.raises(ConfigError) as err:
        compute_flow(a, a, "lucas-kanade")
    msg = str(err.value)
    assert "lucas-kanade" in msg and all(m in msg for m in FLOW_METHODS)


def test_shape_mismatch_raises_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        compute_flow(textured(size=64), textured(size=48), "dis")
    assert "(64, 64)" in str(err.value) and "(48, 48)" in str(err.value)


def test_strain_of_analytic_fields() -> None:
    ys, xs = np.mgrid[0:32, 0:32].astype(np.float32)
    zero = np.zeros_like(xs)
    # translation: no strain
    assert np.abs(optical_strain(np.dstack([zero + 1.3, zero - 0.7]))).max() < 1e-6
    # u = a*x: e_xx = a
    np.testing.assert_allclose(optical_strain(np.dstack([0.1 * xs, zero])), 0.1, rtol=1e-5)
    # u = a*y (shear): e_xy = a/2, strain = sqrt(2) * a/2
    np.testing.assert_allclose(optical_strain(np.dstack([0.1 * ys, zero])), 0.1 / np.sqrt(2), rtol=1e-5)
    # rotation (u = -a*y, v = a*x) has no strain either
    assert np.abs(optical_strain(np.dstack([-0.1 * ys, 0.1 * xs]))).max() < 1e-6
    s = optical_strain(np.dstack([0.1 * xs, zero]))
    assert s.shape == (32, 32) and s.dtype == np.float32


def test_strain_of_measured_flow() -> None:
    a = textured()
    trans = optical_strain(compute_flow(a, shifted(a, 1.5, -1.0)))[16:-16, 16:-16].mean()
    expand = optical_strain(compute_flow(a, expanded(a, 2.0)))[16:-16, 16:-16].mean()
    assert trans < 0.03
    assert expand > 0.08 and expand > 4 * trans


def test_minmax_255() -> None:
    c = np.array([[1.0, 2.0], [3.0, 5.0]])
    out = minmax_255(c)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 255
    np.testing.assert_allclose(out, (c - 1) / 4 * 255, rtol=1e-6)
    const = minmax_255(np.full((3, 3), 7.0))
    assert not np.isnan(const).any() and (const == 0).all()


def test_flow_to_map_format() -> None:
    a = textured()
    flow = compute_flow(a, expanded(a, 1.5), "dis")
    m = flow_to_map(flow)
    assert m.shape == (3, 28, 28) and m.dtype == np.float32
    for c in m:
        assert c.min() == 0 and c.max() == pytest.approx(255)
    # resize the raw channels first, then normalise each
    u = cv2.resize(flow[..., 0], (28, 28), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(m[0], minmax_255(u), atol=1e-3)
    strain = cv2.resize(optical_strain(flow), (28, 28), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(m[2], minmax_255(strain), atol=1e-3)
    assert flow_to_map(flow, size=14).shape == (3, 14, 14)
    # a constant (zero) flow gives zeros, not NaN
    assert (flow_to_map(np.zeros((20, 20, 2), np.float32)) == 0).all()


def test_flow_map_convenience() -> None:
    a = textured()
    b = shifted(a, 0.5, 1.0)
    np.testing.assert_array_equal(flow_map(a, b, "dis", size=28), flow_to_map(compute_flow(a, b, "dis")))


def test_without_opencv_contrib_epir_imports_and_tvl1_names_the_fix(monkeypatch) -> None:
    """Plain opencv-python has no cv2.optflow: ``import epir`` still works (nothing computes flow at import) and
    TV-L1 flow is a one-line error naming the package to install or the other method."""
    import subprocess
    import sys

    code = "import cv2\nif hasattr(cv2, 'optflow'): del cv2.optflow\nimport epir, epir.preprocess\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    monkeypatch.delattr(cv2, "optflow", raising=False)
    frame = np.zeros((16, 16), np.uint8)
    with pytest.raises(ConfigError, match="opencv-contrib-python-headless.*farneback"):
        compute_flow(frame, frame, "tvl1")

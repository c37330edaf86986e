"""The built-in ``synthetic`` dataset: cartoon faces with AU-like micro-movements, through real TV-L1 flow.

Everything is generated on the fly and is deterministic for a seed. Each subject
(:func:`random_subject`) has its own face geometry, skin colour and texture, lighting, sensor noise,
expressivity and habits. A clip (:func:`make_clip`) is a few frames from onset to apex in which the
class is a small, local, AU-like motion (at 64x64 a peak displacement of up to about 2 px, typically
about 1 px, depending on the subject's expressivity and the clip's intensity):

* ``surprise``: brow raise (AU1+AU2) and/or jaw drop (AU26);
* ``positive``: lip-corner pull (AU12), sometimes with cheek raise (AU6);
* ``negative``: brow lowering (AU4), lip press (AU24) and/or lip-corner depression (AU15), each
  subject preferring some of them;

on top of head jitter (sub-pixel translation, a fraction of a degree of rotation, a slight scale
change), distractor motion (blinks, nose wrinkle, chin raise, dimpler, a faint action unit of
another class), lighting flicker and sensor noise.

**How motion is made.** A subject's neutral face is drawn once with OpenCV primitives (2-4x
supersampled, anti-aliased, then area-downsampled) over a smoothed-noise skin texture. Every frame
is that neutral image warped with ``cv2.remap``: each action unit is a sum of Gaussian-windowed
displacement "bumps" placed on the subject's features (e.g. AU12 pushes the mouth corners out and
up), and the head pose (translation, rotation, scale) is applied on top. Warping rather than
redrawing keeps the motion sub-pixel, smooth and exact, and the skin texture moves with the skin,
as optical flow needs.

The flow maps are computed from the generated onset and apex frames with
:func:`epir.preprocess.flow.compute_flow` (OpenCV TV-L1 by default) and
:func:`epir.preprocess.flow.flow_to_map`: u, v and optical strain, resized to 28x28, each channel
min-max normalised to 0-255, exactly the format of the MEGC2019 composite set.

Measured with the defaults (12 subjects x 15 clips, 64x64 frames, TV-L1 with :data:`TVL1_PARAMS`):
generation takes 3-4 s on 2 CPU cores; leave-one-subject-out UF1 is about 0.69-0.74 for a ridge
classifier on the flattened maps (alpha=100) and for STSTNet trained 60 epochs (Adam 3e-3), seeds 0
and 2, i.e. well above chance (0.33) and well below perfect.

The drawing and clip functions are public so that tests and demos can generate face images and
clips (e.g. ``render_face(random_subject(rng, size=256), {"AU12": 1.0})``).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import cv2
import numpy as np
import torch

from epir.data.base import COMPOSITE_CLASSES, FlowDataset, register_dataset
from epir.errors import ConfigError
from epir.preprocess.flow import FLOW_METHODS, compute_flow, flow_to_map

#: Reference frame size: geometry and motion amplitudes are defined at 64x64 and scale with the size.
REF_SIZE = 64
#: Displacement in pixels (at 64x64) of an action unit at intensity 1.0.
AU_PIXELS = 1.4
#: Widening of every action unit's displacement bumps: the motion spreads over the surrounding skin
#: (as real action units do) instead of only the feature's few pixels, which TV-L1's regularisation
#: would mostly smooth away at 64x64.
AU_SPREAD = 1.5
#: Class proportions (negative, positive, surprise), close to the composite set's 250/109/83 of 442.
CLASS_PROBS = (0.55, 0.25, 0.20)
#: TV-L1 settings of the generated dataset: OpenCV's defaults except the stopping threshold
#: ``epsilon`` (0.01 -> 0.05). With the default, TV-L1 takes ~55 ms per 64x64 pair (~10 s for the
#: 180 clips of the default dataset on one core); with 0.05 it takes ~12 ms (~3 s in all). The flow
#: changes by ~0.05 px on average (mean |flow| ~0.5 px), and the earlier stop smooths small local
#: motions slightly less (61% vs 52% of the true displacement recovered inside the moving regions).
TVL1_PARAMS: Mapping[str, float] = MappingProxyType({"epsilon": 0.05})

#: Action units understood by :func:`render_face` (FACS numbers) and what they move.
ACTION_UNITS = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU6": "cheek raiser",
    "AU9": "nose wrinkler",
    "AU12": "lip corner puller",
    "AU14": "dimpler",
    "AU15": "lip corner depressor",
    "AU17": "chin raiser",
    "AU24": "lip pressor",
    "AU26": "jaw drop",
    "AU45": "blink",
}


@dataclass(frozen=True)
class SubjectStyle:
    """Everything that makes one synthetic subject look and move its own way.

    Lengths are in pixels of a ``size x size`` frame; colours are BGR 0-255. Frozen and hashable, so
    the neutral face of a style is rendered once and cached.
    """

    size: int
    center: tuple[float, float]  # face centre (x, y)
    face_axes: tuple[float, float]  # half width, half height of the face ellipse
    skin: tuple[float, ...]
    hair: tuple[float, ...]
    background: tuple[float, ...]
    lips: tuple[float, ...]
    iris: tuple[float, ...]
    eye_y: float  # eye line, relative to the face centre (negative = above)
    eye_dx: float  # half the distance between the eye centres
    eye_w: float  # half width of an eye
    eye_h: float  # half height of an eye
    brow_gap: float  # brow height above the eye line
    brow_len: float  # half length of a brow
    brow_thick: float
    brow_arch: float  # how much the brow middle rises above its ends
    nose_y: float  # nose tip, relative to the face centre
    nose_w: float  # half width of the nostrils
    mouth_y: float  # mouth line, relative to the face centre
    mouth_w: float  # half width of the mouth
    lip_h: float  # lip thickness
    texture_seed: int
    texture_amp: float  # skin texture contrast (gray levels)
    texture_sigma: float  # skin texture grain (pixels)
    light_angle: float  # direction of the lighting gradient (radians)
    light_strength: float  # relative brightness change across the frame
    noise_sigma: float  # sensor noise (gray levels)
    expressivity: float  # multiplies the intensity of every expression of this subject
    head_jitter: float  # typical head translation between onset and apex (pixels)
    negative_habits: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)  # P(AU4, AU24, AU15) for negative

    @property
    def k(self) -> float:
        """Scale of this frame relative to the 64x64 reference."""
        return self.size / REF_SIZE


def random_subject(rng: np.random.Generator, size: int = REF_SIZE) -> SubjectStyle:
    """Draw a random subject.

    Args:
        rng: numpy random generator (the only source of randomness).
        size: frame height and width in pixels (64 for the dataset; 256 gives a detailed face).

    Returns:
        A :class:`SubjectStyle`; its geometry scales with ``size``, the draws do not depend on it.
    """
    if int(size) < 16:
        raise ConfigError(f"Frame size must be at least 16 pixels, got {size!r}.")
    k = size / REF_SIZE
    u = rng.uniform
    red = u(90, 235)  # from dark to light skin
    skin = (red * u(0.55, 0.72), red * u(0.72, 0.84), red)
    hair_level = u(15, 90)
    hair = (hair_level * u(0.7, 1.0), hair_level * u(0.8, 1.0), hair_level)
    bg = u(60, 200)
    background = (bg * u(0.9, 1.1), bg * u(0.9, 1.1), bg * u(0.9, 1.1))
    lips = (skin[0] * u(0.45, 0.65), skin[1] * u(0.4, 0.6), skin[2] * u(0.7, 0.9))
    iris_level = u(15, 80)
    iris = (iris_level * u(0.6, 1.4), iris_level * u(0.8, 1.1), iris_level * u(0.6, 1.0))
    habits = rng.dirichlet((1.0, 1.0, 1.0))
    return SubjectStyle(
        size=int(size),
        center=(k * (32 + u(-3.5, 3.5)), k * (33 + u(-3.5, 3.5))),
        face_axes=(k * u(20.5, 24.5), k * u(26.5, 30.0)),
        skin=tuple(float(min(c, 250)) for c in skin),
        hair=tuple(float(c) for c in hair),
        background=tuple(float(min(c, 250)) for c in background),
        lips=tuple(float(c) for c in lips),
        iris=tuple(float(c) for c in iris),
        eye_y=k * u(-8.0, -5.5),
        eye_dx=k * u(8.5, 10.5),
        eye_w=k * u(3.6, 4.6),
        eye_h=k * u(1.6, 2.2),
        brow_gap=k * u(4.5, 6.0),
        brow_len=k * u(4.5, 5.8),
        brow_thick=k * u(1.3, 2.0),
        brow_arch=k * u(0.3, 1.5),
        nose_y=k * u(4.0, 6.5),
        nose_w=k * u(2.6, 3.6),
        mouth_y=k * u(12.5, 15.0),
        mouth_w=k * u(6.0, 8.0),
        lip_h=k * u(1.4, 2.2),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        texture_amp=float(u(8.0, 18.0)),
        texture_sigma=k * u(0.7, 1.1),
        light_angle=float(u(0, 2 * math.pi)),
        light_strength=float(u(0.05, 0.35)),
        noise_sigma=float(u(1.5, 4.0)),
        expressivity=float(u(0.5, 1.4)),
        head_jitter=k * u(0.2, 0.9),
        negative_habits=tuple(float(p) for p in habits),
    )


# ---------------------------------------------------------------------------------------------
# Drawing


def _pt(x: float, y: float, ss: int) -> tuple[int, int]:
    # cv2 drawing with shift=4: coordinates in 1/16 pixel of the supersampled canvas.
    return int(round(x * ss * 16)), int(round(y * ss * 16))


def _ln(v: float, ss: int) -> int:
    return max(1, int(round(v * ss * 16)))


def _ellipse(img: np.ndarray, c: tuple[float, float], axes: tuple[float, float], angle: float, color: tuple[float, ...],
             ss: int, thickness: float = -1, a0: float = 0, a1: float = 360) -> None:
    cv2.ellipse(img, _pt(*c, ss), (_ln(axes[0], ss), _ln(axes[1], ss)), angle, a0, a1, color,
                thickness if thickness < 0 else max(1, int(round(thickness * ss))), cv2.LINE_AA, 4)


def _polyline(img: np.ndarray, pts: Sequence[tuple[float, float]], color: tuple[float, ...], thick: float, ss: int
              ) -> None:
    p = np.array([_pt(x, y, ss) for x, y in pts], dtype=np.int32).reshape(-1, 1, 2)
    cv2.polylines(img, [p], False, color, max(1, int(round(thick * ss))), cv2.LINE_AA, 4)


@functools.lru_cache(maxsize=64)
def _neutral(style: SubjectStyle) -> np.ndarray:
    """Neutral face of ``style`` without lighting or noise: float32 (H, W, 3). Do not mutate."""
    s, k = style.size, style.k
    ss = max(1, min(4, 512 // s))  # supersampling factor
    img = np.empty((s * ss, s * ss, 3), np.uint8)
    img[:] = np.clip(style.background, 0, 255).astype(np.uint8)
    cx, cy = style.center
    ax, ay = style.face_axes
    skin, hair = style.skin, style.hair
    shade = tuple(c * 0.8 for c in skin)
    # neck and shoulders, hair, ears, face
    cv2.rectangle(img, _pt(cx - 0.55 * ax, cy + 0.6 * ay, ss), _pt(cx + 0.55 * ax, s + 1, ss), shade, -1,
                  cv2.LINE_AA, 4)
    _ellipse(img, (cx, cy + ay + 12 * k), (2.2 * ax, 14 * k), 0, tuple(c * 0.5 for c in style.background), ss)
    _ellipse(img, (cx, cy - 0.12 * ay), (1.1 * ax, 1.02 * ay), 0, hair, ss)
    for side in (-1, 1):
        _ellipse(img, (cx + side * 0.98 * ax, cy + style.eye_y + 4 * k), (2.6 * k, 5.0 * k), 0, shade, ss)
    _ellipse(img, (cx, cy), (ax, ay), 0, skin, ss)
    # hairline: cover the top of the face
    _ellipse(img, (cx, cy - 0.95 * ay), (0.95 * ax, 0.38 * ay), 0, hair, ss)
    ey = cy + style.eye_y
    for side in (-1, 1):
        ex = cx + side * style.eye_dx
        # eye socket shadow, sclera, iris, pupil, upper lid line
        _ellipse(img, (ex, ey - 0.3 * k), (style.eye_w * 1.35, style.eye_h * 2.0), 0, tuple(c * 0.82 for c in skin), ss)
        _ellipse(img, (ex, ey), (style.eye_w, style.eye_h), 0, (235, 238, 240), ss)
        _ellipse(img, (ex, ey), (style.eye_h * 1.05, style.eye_h * 1.05), 0, style.iris, ss)
        _ellipse(img, (ex, ey), (style.eye_h * 0.5, style.eye_h * 0.5), 0, (10, 10, 10), ss)
        _ellipse(img, (ex, ey), (style.eye_w, style.eye_h), 0, tuple(c * 0.3 for c in skin), ss,
                 thickness=0.5 * k, a0=180, a1=360)
        # brow: an arched thick polyline
        by = ey - style.brow_gap
        xs = np.linspace(-1.0, 1.0, 9)
        pts = [(ex + side * t * style.brow_len, by - style.brow_arch * (1 - t * t)) for t in xs]
        _polyline(img, pts, hair, style.brow_thick, ss)
    # nose: bridge shadow, tip, nostrils
    ny = cy + style.nose_y
    _polyline(img, [(cx + 0.8 * k, ey + 1.5 * k), (cx + 1.4 * k, ny - 1.5 * k)], tuple(c * 0.75 for c in skin),
              0.8 * k, ss)
    _ellipse(img, (cx, ny - 0.3 * k), (style.nose_w * 0.9, 1.6 * k), 0, tuple(min(255, c * 1.06) for c in skin), ss)
    for side in (-1, 1):
        _ellipse(img, (cx + side * style.nose_w * 0.55, ny + 0.6 * k), (1.0 * k, 0.6 * k), 0,
                 tuple(c * 0.35 for c in skin), ss)
    # mouth: lips and the dark line between them
    my = cy + style.mouth_y
    _ellipse(img, (cx, my - 0.45 * style.lip_h), (style.mouth_w * 0.95, style.lip_h), 0, style.lips, ss, a0=180, a1=360)
    _ellipse(img, (cx, my), (style.mouth_w * 0.85, style.lip_h * 1.3), 0, style.lips, ss, a0=0, a1=180)
    _polyline(img, [(cx - style.mouth_w, my - 0.2 * k), (cx, my + 0.1 * k), (cx + style.mouth_w, my - 0.2 * k)],
              tuple(c * 0.35 for c in style.lips), 0.7 * k, ss)
    # chin shadow
    _ellipse(img, (cx, my + 5.0 * k), (3.5 * k, 0.9 * k), 0, tuple(c * 0.9 for c in skin), ss)
    out = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA).astype(np.float32)
    # skin texture: smoothed noise, strong on the face, weaker elsewhere
    trng = np.random.default_rng(style.texture_seed)
    tex = trng.standard_normal((s, s)).astype(np.float32)
    tex = cv2.GaussianBlur(tex, (0, 0), style.texture_sigma)
    tex *= style.texture_amp / (tex.std() + 1e-6)
    mask = np.zeros((s, s), np.float32)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0 * k) * 0.7 + 0.3
    out += (tex * mask)[:, :, None]
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


@functools.lru_cache(maxsize=64)
def _bumps(style: SubjectStyle) -> dict[str, list[tuple[float, float, float, float, float, float]]]:
    """Displacement bumps of every action unit: (x, y, sigma_x, sigma_y, dx, dy), dx/dy in AU units."""
    k = style.k
    cx, cy = style.center
    ey = cy + style.eye_y
    by = ey - style.brow_gap
    my = cy + style.mouth_y
    ny = cy + style.nose_y
    bl, mw = style.brow_len, style.mouth_w
    b: dict[str, list] = {au: [] for au in ACTION_UNITS}
    for side in (-1, 1):
        ex = cx + side * style.eye_dx
        b["AU1"].append((ex - side * 0.6 * bl, by, 0.45 * bl, 2.2 * k, 0.0, -1.0))
        b["AU2"].append((ex + side * 0.6 * bl, by, 0.45 * bl, 2.2 * k, 0.0, -1.0))
        b["AU4"].append((ex - side * 0.3 * bl, by + 0.5 * k, 0.6 * bl, 2.4 * k, -side * 0.55, 0.8))
        b["AU6"].append((ex, ey + 4.5 * k, 3.5 * k, 2.2 * k, 0.0, -0.7))
        b["AU9"].append((cx + side * 2.0 * k, ny - 3.0 * k, 1.8 * k, 2.5 * k, 0.0, -0.8))
        b["AU12"].append((cx + side * mw, my, 2.2 * k, 2.2 * k, side * 0.7, -0.65))
        b["AU14"].append((cx + side * (mw + 0.5 * k), my, 1.6 * k, 1.8 * k, -side * 0.8, 0.0))
        b["AU15"].append((cx + side * mw, my + 0.3 * k, 2.2 * k, 2.0 * k, -side * 0.15, 0.95))
        b["AU24"].append((cx + side * 0.8 * mw, my, 2.0 * k, 2.0 * k, -side * 0.55, 0.0))
        b["AU45"].append((ex, ey - 0.5 * style.eye_h, 1.1 * style.eye_w, 1.1 * style.eye_h, 0.0, 1.0))
    b["AU17"].append((cx, my + 5.5 * k, 4.0 * k, 2.4 * k, 0.0, -0.9))
    b["AU24"].append((cx, my - 1.4 * style.lip_h, 0.6 * mw, 1.4 * k, 0.0, 0.6))
    b["AU24"].append((cx, my + 1.4 * style.lip_h, 0.6 * mw, 1.4 * k, 0.0, -0.6))
    b["AU26"].append((cx, my + 1.5 * style.lip_h, 0.9 * mw, 2.0 * k, 0.0, 0.8))
    b["AU26"].append((cx, my + 6.5 * k, 1.3 * mw, 4.5 * k, 0.0, 1.0))
    return {au: [(x, y, AU_SPREAD * sx, AU_SPREAD * sy, ux, uy) for x, y, sx, sy, ux, uy in bs] for au, bs in b.items()}


def displacement(
    style: SubjectStyle, au: Mapping[str, float], xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Forward displacement (pixels) of the action units ``au`` at face points (xs, ys).

    Args:
        style: the subject.
        xs: x coordinates of the face points (pixels).
        ys: y coordinates of the face points (pixels).
        au: action unit name (see :data:`ACTION_UNITS`) -> intensity; at 1.0 the centre of each of the
            unit's bumps moves about :data:`AU_PIXELS` (1 px) at 64x64, scaled with the frame size;
            negative values move the other way.
        xs, ys: float32 arrays of the same shape, point coordinates in the neutral face.

    Returns:
        (dx, dy) float32 arrays of the shape of ``xs``.
    """
    dx = np.zeros_like(xs, dtype=np.float32)
    dy = np.zeros_like(xs, dtype=np.float32)
    bumps = _bumps(style)
    scale = AU_PIXELS * style.k
    for name, a in au.items():
        if name not in bumps:
            raise ConfigError(f"Unknown action unit {name!r}. Known: {', '.join(ACTION_UNITS)}.")
        if a == 0:
            continue
        for bx, by, sx, sy, ux, uy in bumps[name]:
            g = np.exp(-0.5 * (((xs - bx) / sx) ** 2 + ((ys - by) / sy) ** 2)).astype(np.float32)
            dx += (a * scale * ux) * g
            dy += (a * scale * uy) * g
    return dx, dy


def render_face(
    style: SubjectStyle,
    au: Mapping[str, float] | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
    *,
    rotation: float = 0.0,
    scale: float = 1.0,
    light: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render one frame of a subject's face.

    The neutral face is warped (``cv2.remap``) by the action units' displacement field, then by the
    head pose (rotation and scale about the face centre, then ``shift``); the lighting gradient
    (fixed to the camera) and, when ``rng`` is given, Gaussian sensor noise are added last.

    Args:
        style: the subject (:func:`random_subject`).
        au: action unit intensities, e.g. ``{"AU12": 1.0}`` (see :func:`displacement`); None = neutral.
        shift: head translation (dx, dy) in pixels.
        rotation: head roll in degrees (positive = clockwise on screen).
        scale: head scale (1.0 = neutral distance).
        light: global brightness factor (lighting flicker).
        rng: source of the sensor noise; None renders a noise-free frame.

    Returns:
        uint8 BGR image of shape (size, size, 3).
    """
    s = style.size
    base = _neutral(style)
    xs, ys = _grid(s)
    cx, cy = style.center
    # inverse head pose: where each output pixel comes from in the (deformed) face
    th = math.radians(rotation)
    c, sn = math.cos(th) / scale, math.sin(th) / scale
    px, py = xs - shift[0] - cx, ys - shift[1] - cy
    qx = (c * px + sn * py + cx).astype(np.float32)
    qy = (-sn * px + c * py + cy).astype(np.float32)
    if au:
        # inverse of the small forward deformation: q - d(q) (exact to first order)
        dx, dy = displacement(style, au, qx, qy)
        qx, qy = qx - dx, qy - dy
    img = cv2.remap(base, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ca, sa = math.cos(style.light_angle), math.sin(style.light_angle)
    lit = light * (1.0 + style.light_strength * ((xs - s / 2) * ca + (ys - s / 2) * sa) / s)
    img = img * lit[:, :, None]
    if rng is not None and style.noise_sigma > 0:
        img = img + rng.normal(0.0, style.noise_sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Clips


@dataclass
class ClipSpec:
    """What happens in one clip between onset and apex (all values at the apex).

    Attributes:
        label: class index into ``COMPOSITE_CLASSES``.
        expression: action units of the class.
        distractors: action units unrelated to the class (blinks, ...), with their own timing.
        distractor_onset: fraction of the clip (0-1) at which the distractors start.
        shift: head translation at the apex (pixels).
        rotation: head roll at the apex (degrees).
        scale: head scale at the apex.
        light: brightness factor at the apex.
    """

    label: int
    expression: dict[str, float] = field(default_factory=dict)
    distractors: dict[str, float] = field(default_factory=dict)
    distractor_onset: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    scale: float = 1.0
    light: float = 1.0


def _label_index(label: int | str) -> int:
    if isinstance(label, str):
        if label not in COMPOSITE_CLASSES:
            raise ConfigError(f"Unknown class {label!r}. Valid classes: {', '.join(COMPOSITE_CLASSES)}.")
        return COMPOSITE_CLASSES.index(label)
    if not 0 <= int(label) < len(COMPOSITE_CLASSES):
        raise ConfigError(f"Class index must be in 0..{len(COMPOSITE_CLASSES) - 1}, got {label!r}.")
    return int(label)


def sample_clip(style: SubjectStyle, label: int | str, rng: np.random.Generator) -> ClipSpec:
    """Draw the expression, distractors and head motion of one clip of class ``label``.

    Args:
        style: the subject.
        label: class name (``"negative"``, ``"positive"``, ``"surprise"``) or index.
        rng: numpy random generator.

    Returns:
        A :class:`ClipSpec`.
    """
    y = _label_index(label)
    u = rng.uniform
    amp = style.expressivity * u(0.35, 1.4)
    expr: dict[str, float] = {}
    if COMPOSITE_CLASSES[y] == "surprise":
        r = u()
        if r < 0.4:  # brows only
            a = amp * u(0.8, 1.1)
            expr.update(AU1=a, AU2=a * u(0.7, 1.1))
        elif r < 0.65:  # jaw only
            expr.update(AU26=amp)
        else:
            a = amp * u(0.7, 1.0)
            expr.update(AU1=a, AU2=a * u(0.7, 1.1), AU26=amp * u(0.6, 1.0))
    elif COMPOSITE_CLASSES[y] == "positive":
        expr["AU12"] = amp
        if u() < 0.5:
            expr["AU6"] = amp * u(0.4, 0.9)
    else:  # negative: the subject's habits pick brow lowering, lip press or lip-corner depression
        choice = int(rng.choice(3, p=style.negative_habits))
        expr[("AU4", "AU24", "AU15")[choice]] = amp
        if u() < 0.25:  # sometimes a second negative AU
            other = int(rng.choice([i for i in range(3) if i != choice]))
            expr[("AU4", "AU24", "AU15")[other]] = amp * u(0.4, 0.8)
    distract: dict[str, float] = {}
    if u() < 0.35:
        distract["AU45"] = u(0.3, 1.2)
    if u() < 0.6:
        name = str(rng.choice(["AU9", "AU14", "AU17", "AU6"]))
        distract[name] = distract.get(name, 0.0) + u(0.2, 0.8) * rng.choice([-1.0, 1.0])
    if u() < 0.6:  # a faint action unit of another class
        name = str(rng.choice(["AU1", "AU4", "AU12", "AU15", "AU24", "AU26"]))
        if name not in expr:
            distract[name] = u(0.2, 0.8)
    j = style.head_jitter
    return ClipSpec(
        label=y,
        expression=expr,
        distractors=distract,
        distractor_onset=float(u(0.0, 0.5)),
        shift=(float(rng.normal(0, j)), float(rng.normal(0, j))),
        rotation=float(rng.normal(0, 1.0)),
        scale=float(1.0 + rng.normal(0, 0.01)),
        light=float(1.0 + rng.normal(0, 0.01)),
    )


def render_clip(
    style: SubjectStyle, spec: ClipSpec, rng: np.random.Generator | None, n_frames: int = 3
) -> list[np.ndarray]:
    """Render the frames of a clip from onset (neutral, no head motion) to apex.

    The expression ramps linearly from 0 at the first frame to ``spec.expression`` at the last;
    distractors ramp from ``spec.distractor_onset``; head pose and lighting ramp with small extra
    tremor on the intermediate frames.

    Args:
        style: the subject.
        spec: the clip (:func:`sample_clip`).
        rng: source of sensor noise and tremor; None gives noise-free frames.
        n_frames: number of frames, at least 2.

    Returns:
        ``n_frames`` uint8 BGR images of shape (size, size, 3), onset first, apex last.
    """
    if n_frames < 2:
        raise ConfigError(f"A clip needs at least 2 frames (onset and apex), got n_frames={n_frames}.")
    frames = []
    for i in range(n_frames):
        t = i / (n_frames - 1)
        td = max(0.0, (t - spec.distractor_onset) / (1.0 - spec.distractor_onset)) if t > 0 else 0.0
        au = {name: a * t for name, a in spec.expression.items()}
        for name, a in spec.distractors.items():
            au[name] = au.get(name, 0.0) + a * td
        tremor: tuple[float, ...] = (0.0, 0.0)
        if rng is not None and 0 < i < n_frames - 1:
            tremor = tuple(float(v) for v in rng.normal(0, 0.1 * style.k, 2))
        frames.append(render_face(
            style, au,
            shift=(spec.shift[0] * t + tremor[0], spec.shift[1] * t + tremor[1]),
            rotation=spec.rotation * t,
            scale=1.0 + (spec.scale - 1.0) * t,
            light=1.0 + (spec.light - 1.0) * t,
            rng=rng,
        ))
    return frames


def make_clip(style: SubjectStyle, label: int | str, rng: np.random.Generator, n_frames: int = 3) -> list[np.ndarray]:
    """Generate a clip of class ``label``: ``render_clip(style, sample_clip(style, label, rng), rng, n_frames)``.

    Args:
        style: the subject (:func:`random_subject`).
        label: class name or index into ``COMPOSITE_CLASSES``.
        rng: numpy random generator.
        n_frames: number of frames, onset to apex (at least 2).

    Returns:
        ``n_frames`` uint8 BGR images of shape (size, size, 3), onset first, apex last.
    """
    return render_clip(style, sample_clip(style, label, rng), rng, n_frames)


def subject_labels(rng: np.random.Generator, n: int, probs: Sequence[float] = CLASS_PROBS) -> np.ndarray:
    """Labels of one subject's ``n`` clips: drawn with ``probs``, at least two distinct classes.

    Args:
        rng: numpy random generator.
        n: number of clips (at least 2).
        probs: class probabilities.

    Returns:
        int64 array of shape (n,).
    """
    labels = rng.choice(len(probs), size=n, p=np.asarray(probs) / np.sum(probs)).astype(np.int64)
    if len(np.unique(labels)) < 2:
        others = [c for c in range(len(probs)) if c != labels[0]]
        p = np.asarray([probs[c] for c in others], dtype=np.float64)
        labels[int(rng.integers(n))] = int(rng.choice(others, p=p / p.sum()))
    return labels


# ---------------------------------------------------------------------------------------------
# The dataset


@functools.lru_cache(maxsize=8)
def _generate(seed: int, n_subjects: int, clips_per_subject: int, frame_size: int, flow_method: str,
              map_size: int) -> FlowDataset:
    params = TVL1_PARAMS if flow_method == "tvl1" else None
    width = max(2, len(str(n_subjects)))
    cwidth = max(2, len(str(clips_per_subject)))
    children = np.random.SeedSequence(seed).spawn(n_subjects)  # subject i is the same whatever n_subjects
    xs, ys, subjects, subject_ids, clips = [], [], [], [], []
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        style = random_subject(rng, frame_size)
        labels = subject_labels(rng, clips_per_subject)
        sid = f"s{i + 1:0{width}d}"
        for j, label in enumerate(labels):
            frames = make_clip(style, int(label), rng, n_frames=3)
            flow = compute_flow(frames[0], frames[-1], flow_method, params=params)
            xs.append(flow_to_map(flow, size=map_size))
            ys.append(int(label))
            subjects.append(f"synthetic/{sid}")
            subject_ids.append(sid)
            clips.append(f"{sid}_c{j + 1:0{cwidth}d}")
    return FlowDataset(
        x=torch.from_numpy(np.stack(xs).astype(np.float32)),
        y=torch.tensor(ys, dtype=torch.int64),
        subjects=subjects,
        subject_ids=subject_ids,
        sources=["synthetic"] * len(xs),
        clips=clips,
        class_names=COMPOSITE_CLASSES,
        name="synthetic",
        info={
            "generator": "epir.data.synthetic",
            "seed": seed,
            "n_subjects": n_subjects,
            "clips_per_subject": clips_per_subject,
            "frame_size": frame_size,
            "flow_method": flow_method,
            "flow_params": dict(params or {}),
            "map_size": map_size,
            "class_probs": CLASS_PROBS,
            "au_pixels": AU_PIXELS * frame_size / REF_SIZE,
        },
    )


@register_dataset(
    description="Generated on the fly, deterministic per seed: cartoon faces with AU-like 1-2 px "
    "micro-movements, head jitter and distractors, through real TV-L1 flow to 28x28 u/v/strain maps."
)
def synthetic(
    root: str | None = None,
    *,
    seed: int = 0,
    n_subjects: int = 12,
    clips_per_subject: int = 15,
    frame_size: int = 64,
    flow_method: str = "tvl1",
    map_size: int = 28,
) -> FlowDataset:
    """The built-in synthetic micro-expression dataset (classes negative, positive, surprise).

    Args:
        root: accepted for a uniform loader signature and ignored (nothing is read from disk).
        seed: random seed; the same seed gives bit-identical tensors.
        n_subjects: number of subjects (``synthetic/s01`` ...); subject i does not depend on it.
        clips_per_subject: clips per subject (at least 2; every subject gets at least two classes).
        frame_size: height and width of the generated frames (motion amplitudes scale with it).
        flow_method: ``"tvl1"`` (default), ``"farneback"`` or ``"dis"``, see
            :func:`epir.preprocess.flow.compute_flow`. TV-L1 runs with :data:`TVL1_PARAMS`.
        map_size: height and width of the flow maps.

    Returns:
        A :class:`FlowDataset` with x of shape (N, 3, map_size, map_size), float32 in 0-255,
        N = n_subjects * clips_per_subject. Results are cached per argument set; every call returns
        fresh tensors and lists, so callers may modify them.
    """
    if int(seed) < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")
    if int(n_subjects) < 1:
        raise ConfigError(f"n_subjects must be at least 1, got {n_subjects!r}.")
    if int(clips_per_subject) < 2:
        raise ConfigError(f"clips_per_subject must be at least 2, got {clips_per_subject!r}.")
    if int(frame_size) < 16:
        raise ConfigError(f"frame_size must be at least 16, got {frame_size!r}.")
    if int(map_size) < 1:
        raise ConfigError(f"map_size must be at least 1, got {map_size!r}.")
    if flow_method not in FLOW_METHODS:
        raise ConfigError(f"Unknown flow method {flow_method!r}. Valid methods: {', '.join(FLOW_METHODS)}.")
    ds = _generate(int(seed), int(n_subjects), int(clips_per_subject), int(frame_size), flow_method, int(map_size))
    return FlowDataset(
        x=ds.x.clone(),
        y=ds.y.clone(),
        subjects=list(ds.subjects),
        subject_ids=list(ds.subject_ids),
        sources=list(ds.sources),
        clips=list(ds.clips),
        class_names=ds.class_names,
        name=ds.name,
        info=dict(ds.info),
    )


__all__ = [
    "ACTION_UNITS",
    "AU_PIXELS",
    "CLASS_PROBS",
    "ClipSpec",
    "SubjectStyle",
    "TVL1_PARAMS",
    "displacement",
    "make_clip",
    "random_subject",
    "render_clip",
    "render_face",
    "sample_clip",
    "subject_labels",
    "synthetic",
]

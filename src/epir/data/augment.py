"""Augmentation that respects flow physics: rotations and scalings that turn the (u, v) vectors with the pixels,
and mixup for flow maps.

The physics. A flow field ``f(p) = (u, v)(p)`` of a face rotated by ``R`` (angle ``a``) and scaled by ``s``
about the image centre is ``f'(p) = s R f(R^-1 p / s)``: every vector moves to where its pixel went, turns by
the same angle and grows by the same factor. Optical strain (the magnitude of the symmetric flow gradient) is
a scalar that does not turn, and since ``d(s R f(R^-1 p / s))/dp = R (df) R^-1`` its magnitude does not
change either: it only moves with the pixels. :func:`rotate_scale_flow` does exactly this on flow in pixels.

The composite set's maps are not flow in pixels: each channel of each sample was min-max normalised to 0-255,
``u' = 255 (u - min u) / (max u - min u)``, and likewise ``v'``. What is recoverable from ``u'`` and ``v'``:

- where every pixel goes: rotating and scaling the pixels is exact (up to bilinear resampling);
- a horizontal flip: negating u before the normalisation is exactly ``255 - u'`` after it;
- a scaling: the normalisation takes the factor ``s`` out again, so values only move with the pixels.

What is not: the zero-motion level of each channel (``min u`` is lost) and the ratio of the two channels'
scales (``max u - min u`` against ``max v - min v``). A rotation mixes u and v, so it needs both.
:func:`rotate_scale_maps` therefore *estimates* them: the zero level of each channel as its median (most of a
face does not move in a micro-expression, so the median pixel is at rest) and equal scales for u and v; then
it rotates the recentred vectors, and min-max normalises every channel to 0-255 again as the set was made.
With small angles (a few degrees) the error of those estimates is a small fraction of the vector; the
``epir preprocess`` output keeps unquantised flow where the exact transform applies.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: Channel order of epir's maps: horizontal flow, vertical flow, optical strain.
U, V, STRAIN = 0, 1, 2
MAP_MAX = 255.0


def _grid(angle: torch.Tensor, scale: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sampling grid of ``I'(p) = I(R^-1 p / s)`` (rotation by ``angle`` radians in image coordinates, x right,
    y down, about the centre), for ``F.grid_sample`` on a (B, C, H, W) batch of square images.
    """
    c, s_ = torch.cos(angle), torch.sin(angle)
    inv = 1.0 / scale
    theta = torch.stack(
        [torch.stack([c * inv, s_ * inv, torch.zeros_like(c)], -1),
         torch.stack([-s_ * inv, c * inv, torch.zeros_like(c)], -1)], -2
    )  # R^-1 / s = R^T / s
    return F.affine_grid(theta, list(shape), align_corners=False)


def rotate_scale_flow(flow: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The flow of the rotated and scaled face: ``f'(p) = s R f(R^-1 p / s)`` (exact physics, flow in pixels).

    Args:
        flow: (B, C, H, W) with u, v in channels 0, 1 (in pixels, x right, y down); any further channels
            (strain) are scalars that only move with the pixels.
        angle: (B,) rotation angles in radians (positive turns x towards y, i.e. clockwise on screen).
        scale: (B,) scale factors (default 1).

    Returns:
        (B, C, H, W). Pixels brought in from outside the image repeat the border.
    """
    scale = torch.ones_like(angle) if scale is None else scale
    moved = F.grid_sample(flow, _grid(angle, scale, flow.shape), mode="bilinear", padding_mode="border",
                          align_corners=False)
    c, s_ = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    k = scale[:, None, None]
    u, v = moved[:, U], moved[:, V]
    out = moved.clone()
    out[:, U] = k * (c * u - s_ * v)
    out[:, V] = k * (s_ * u + c * v)
    return out


def minmax_255(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each channel of each sample to 0-255 (a constant channel becomes 0)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) * (MAP_MAX / (hi - lo).clamp_min(1e-12))


def rotate_scale_maps(maps: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate and scale min-max normalised 0-255 flow maps (u, v, strain), turning the vectors with the pixels.

    The zero level of u and v is estimated as each channel's median and their scales are taken as equal (see
    the module docstring for why that is the most a normalised map allows); the result is min-max
    normalised to 0-255 per channel again, like the set itself. Strain only moves with the pixels.

    Args:
        maps: (B, 3, H, W) at 0-255.
        scale: (B,) zoom factors (None: 1, rotation only).
        angle: (B,) radians; scale: (B,) factors (default 1).
    """
    zero = maps[:, :2].flatten(2).median(dim=-1).values[..., None, None]
    flow = maps.clone()
    flow[:, :2] = maps[:, :2] - zero
    out = rotate_scale_flow(flow, angle, scale)
    return minmax_255(out)


def random_rotate_scale(
    maps: torch.Tensor, max_degrees: float, max_scale: float, gen: torch.Generator
) -> torch.Tensor:
    """Random rotation in [-max_degrees, max_degrees] and scale in [1 - max_scale, 1 + max_scale] per sample."""
    b = maps.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_degrees)
    scale = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * max_scale
    return rotate_scale_maps(maps, angle, scale)


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) of a batch with a shuffled copy of itself.

    ``lam ~ Beta(alpha, alpha)``, folded to ``lam >= 0.5`` so ``y_a`` is the dominant label; the maps are
    ``lam * x + (1 - lam) * x[perm]`` and the loss is ``lam * L(y_a) + (1 - lam) * L(y_b)`` with the same
    ``lam``: the labels are mixed with exactly the maps' weights. Mixing two 0-255 maps stays in 0-255; a
    mixed map is the flow field of neither clip, a regulariser rather than a physical sample.

    Returns:
        (mixed x, y_a, y_b = y[perm], lam).
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))  # the Beta draw comes from our stream too
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(x), generator=gen)
    return lam * x + (1.0 - lam) * x[perm], y, y[perm], lam


__all__ = ["minmax_255", "mixup", "random_rotate_scale", "rotate_scale_flow", "rotate_scale_maps"]

"""Augmentation that respects flow physics: rotations and scalings that turn the (u, v) vectors with the pixels,
and mixup and CutMix for flow maps.

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


def mirror_maps(x: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror of flow maps ``x`` (B, 3, H, W) at the 0-255 scale: pixels flipped left-right and
    horizontal motion reversed. On a map min-max normalised per sample, negating u before the normalisation is
    exactly ``255 - u`` after it, so the mirror is exact; v and strain only move with the pixels.
    """
    xf = x.flip(-1)
    xf[:, U] = MAP_MAX - xf[:, U]
    return xf


def recentre_maps(x: torch.Tensor) -> torch.Tensor:
    """Each map's u and v minus their own median (B, 3, H, W at 0-255; strain unchanged).

    The composite maps were min-max normalised per sample and channel, so "no motion" sits at a different
    value in every map (``255 * -min u / (max u - min u)``). Most of a face does not move in a micro-expression,
    so the median pixel is at rest: after recentring, 0 means "still" in every map and the sign is the direction
    of motion. It uses the sample alone. The median is the lower one for an even pixel count, as ``torch.median``
    gives it; see :func:`map_median`.
    """
    flow = x[:, :2]
    median = map_median(flow)
    return torch.cat([flow - median[..., None, None], x[:, 2:]], dim=1)


def map_median(x: torch.Tensor) -> torch.Tensor:
    """Each map's median pixel (B, C) of ``x`` (B, C, H, W): the lower of the two middle values for an even count.

    ``torch.median`` finds it by selection, about four times faster than a full sort on a 28 x 28 map (it ran in
    every training batch of a recentred recipe: ``benchmarks/recentre_speed.py``); ONNX has no median operator, so
    while a model is exported (``torch.compiler.is_exporting``) the same value is read from a sort, which it has.
    Both give the same element of the map, so the two agree exactly.
    """
    flat = x.flatten(2)
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return flat.sort(dim=-1).values[..., (flat.shape[-1] - 1) // 2]
    return flat.median(dim=-1).values


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
    return minmax_255(rotate_scale_flow(recentre_maps(maps), angle, scale))


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


def cutmix(
    x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019) of a batch with a shuffled copy of itself.

    ``lam ~ Beta(alpha, alpha)`` folded to ``lam >= 0.5``; a box of area ``(1 - lam) H W`` (aspect as the map,
    centre uniform, clipped at the border) is replaced in every map by the same box of its partner
    ``x[perm]``, and ``lam`` becomes the share of pixels actually kept. The loss is ``lam L(y_a) + (1 - lam)
    L(y_b)``: the labels are mixed with exactly the area each clip contributes. All three channels are pasted
    together, so inside the box the vectors and the strain are the partner's own (its motion, at its own 0-255
    scaling): a map made of two faces' regions, not a blend of both everywhere as in mixup.

    Returns:
        (mixed x, y_a, y_b = y[perm], lam).
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    rng = np.random.default_rng(seed)
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    h, w = x.shape[-2:]
    bh, bw = round(h * math.sqrt(1.0 - lam)), round(w * math.sqrt(1.0 - lam))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(cy - bh // 2, 0), min(cy - bh // 2 + bh, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx - bw // 2 + bw, w)
    perm = torch.randperm(len(x), generator=gen)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return out, y, y[perm], lam


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, mixup_alpha: float, cutmix_alpha: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The recipe's batch mixing (``train.mixup``, ``train.cutmix``): mixup, CutMix, or (both set) one of the two
    per batch with equal odds, as timm does. Neither set: the batch unchanged with ``lam = 1``.

    Returns:
        (x, y_a, y_b, lam) for the loss ``lam L(y_a) + (1 - lam) L(y_b)``.
    """
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or bool(torch.rand(1, generator=gen) < 0.5))
    if use_cutmix:
        return cutmix(x, y, cutmix_alpha, gen)
    if mixup_alpha > 0:
        return mixup(x, y, mixup_alpha, gen)
    return x, y, y, 1.0


__all__ = ["cutmix", "map_median", "minmax_255", "mirror_maps", "mix_batch", "mixup", "random_rotate_scale",
           "recentre_maps", "rotate_scale_flow", "rotate_scale_maps"]

"""``epir predict --explain``: where on the face the decision came from, as one PNG.

The figure is :data:`EXPLAIN_SIZE` pixels (width x height; 1500 x 360), five panels in a row under a title
with the predicted class and every class's probability:

1. **decision** - the aligned apex face crop (the image the flow was computed on) with the model's evidence
   over it, per patch of the model's input grid:

   * EPIR with DTSM: the tokens DTSM kept for the classifier, each patch tinted by, and labelled with, its
     share of the pooling weights (a merged token's weight is shared by its patches); patches of discarded
     tokens are dimmed, kept ones outlined;
   * EPIR without DTSM: the attention each patch receives in the last block (mean over heads and queries),
     labelled with its share;
   * any other model (and EPIR on HTNet's mosaic input, whose patches are not face positions): gradient
     saliency, |d logit / d input| of the predicted class summed over u, v and strain.
2. **flow** - the onset-to-apex optical flow on the face crop: hue is the direction, brightness the
   magnitude, arrows every few pixels.
3-5. **u**, **v**, **strain** - the three channels of the 28 x 28 model input, with the patch grid.

A prediction made from a flow map alone (no clip) shows the strain channel in place of the face.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from epir.data.transforms import mosaic
from epir.errors import ConfigError
from epir.fileio import writable_parent

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from epir.inference.predictor import Prediction, Predictor

#: Size of the explanation PNG in pixels, (width, height).
EXPLAIN_SIZE = (1500, 360)
_DPI = 100


@dataclass
class Evidence:
    """Where the model looked, on the model input's pixel grid.

    Attributes:
        kind: ``dtsm``, ``attention`` or ``saliency``.
        heat: importance per input pixel, float (size, size), max 1 (0 where nothing was kept).
        kept: for ``dtsm``, which input pixels belong to kept tokens, bool (size, size); None otherwise.
        grid: the model's patch grid side (e.g. 4 for 7-pixel patches on 28 x 28), or None.
        note: a short description for the panel title.
        shares: for ``dtsm`` and ``attention``, each patch's share of the evidence, (grid, grid), summing to 1
            (DTSM: of the pooling weights; attention: of the attention received); None for saliency.
    """

    kind: str
    heat: np.ndarray
    kept: np.ndarray | None
    grid: int | None
    note: str
    shares: np.ndarray | None = None


def _patch_to_pixels(values: np.ndarray, grid: int, size: int) -> np.ndarray:
    """Per-patch values (grid * grid,), row-major, to a (size, size) image of constant cells (nearest
    neighbour, so a grid that does not divide ``size``, as after EPIR's conv stem, still covers the image).
    """
    cells = np.asarray(values, dtype=np.float32).reshape(grid, grid)
    return cv2.resize(cells, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float64)


def model_evidence(predictor: Predictor, flow_map: np.ndarray, landmarks: np.ndarray | None = None) -> Evidence:
    """Compute the model's evidence for one flow map (3, size, size) at 0-255 (see the module docstring).

    ``landmarks``: the five points, for a mosaic input trained on per-sample landmarks (see
    :meth:`Predictor.network_input`).
    """
    wrapper = predictor.model
    net = wrapper.model
    size = predictor.checkpoint.input_size
    x = torch.as_tensor(np.asarray(flow_map, dtype=np.float32))[None].to(predictor.device)
    if wrapper.has_intermediates() and predictor.checkpoint.transform == "none":
        with torch.inference_mode():
            inter = wrapper.forward_intermediates(x)
        grid = int(inter["grid"])
        sources = inter["sources"][0].float().cpu().numpy()  # (N_final, patches), patch counts
        per_patch = sources / sources.sum(axis=1, keepdims=True)  # each token's weight shared by its patches
        if inter.get("selection") is not None and inter.get("scores") is not None:
            idx = inter["selection"][0].cpu().numpy()
            scores = inter["scores"][0].cpu().numpy()
            w = np.exp(scores[idx] - scores[idx].max())
            w /= w.sum()
            values = (w[:, None] * per_patch[idx]).sum(axis=0)
            kept = _patch_to_pixels((sources[idx].sum(axis=0) > 0).astype(float), grid, size) > 0
            note = f"DTSM: {len(idx)} of {len(scores)} tokens kept"
            kind = "dtsm"
        else:
            attn = [a for a in inter["attention"] if a is not None][-1][0]  # (heads, N, N), last block
            received = attn.mean(dim=(0, 1)).cpu().numpy()
            values = (received[:, None] * per_patch).sum(axis=0)
            kept, note, kind = None, "attention received, last block", "attention"
        heat = _patch_to_pixels(values / max(values.max(), 1e-12), grid, size)
        shares = (values / max(values.sum(), 1e-12)).reshape(grid, grid)
        if wrapper.teacher is not None:  # the tokens are the model's; the prediction also weighs the teacher's
            note += f" ({predictor.checkpoint.model_name}'s; the prediction mixes in its teacher at {wrapper.mix:g})"
        return Evidence(kind=kind, heat=heat, kept=kept, grid=grid, note=note, shares=shares)
    # any other model: gradient saliency on the 0-255 map (before the input transform, so on face positions)
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        mosaic_landmarks = None
        if predictor.checkpoint.per_clip_landmarks:
            mosaic_landmarks = landmarks
            if mosaic_landmarks is None:
                raise ConfigError("This model's mosaic input needs the clip's landmarks; explain a clip's prediction.")
        xin = x
        if mosaic_landmarks is not None:  # the mosaic as torch indexing: gradients flow back to the map

            xin = mosaic(x, np.asarray(mosaic_landmarks, dtype=np.float64))
        logits = wrapper(xin)
        logits[0, logits[0].argmax()].backward()
    if x.grad is None:
        raise ConfigError("The model's output does not depend on its input: no saliency to show.")
    sal = x.grad[0].abs().sum(dim=0).cpu().numpy()
    sal = cv2.GaussianBlur(sal.astype(np.float32), (0, 0), 1.0)
    patches = getattr(net, "num_patches", None)
    cells = int(round(patches**0.5)) if isinstance(patches, int) else None
    return Evidence(kind="saliency", heat=sal / max(float(sal.max()), 1e-12), kept=None, grid=cells,
                    note="gradient saliency |d logit / d input|")


def flow_to_rgb(flow: np.ndarray) -> np.ndarray:
    """Colour-code a flow field (H, W, 2): hue = direction, value = magnitude (max 1). Returns RGB float (H, W, 3)."""
    fx, fy = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
    mag, ang = cv2.cartToPolar(fx, fy, angleInDegrees=True)
    hsv = np.zeros((*flow.shape[:2], 3), dtype=np.float32)
    hsv[..., 0] = ang
    hsv[..., 1] = 1.0
    hsv[..., 2] = mag / max(float(mag.max()), 1e-6)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _outline_cells(ax: Axes, kept: np.ndarray | None, grid: int | None, extent: float, color: str) -> None:
    """Outline the patch cells whose pixels are all in ``kept`` (a (size, size) mask) on an image ``extent`` wide."""
    if kept is None or not grid:
        return
    from matplotlib.patches import Rectangle  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    k = kept.shape[0] // grid
    cell = extent / grid
    for r in range(grid):
        for c in range(grid):
            if kept[r * k, c * k]:
                ax.add_patch(Rectangle((c * cell - 0.5, r * cell - 0.5), cell, cell, fill=False, edgecolor=color,
                                       linewidth=1.2))


def _grid_lines(ax: Axes, grid: int | None, extent: float) -> None:
    if not grid:
        return
    for i in range(1, grid):
        pos = i * extent / grid - 0.5
        ax.axhline(pos, color="white", lw=0.5, alpha=0.5)
        ax.axvline(pos, color="white", lw=0.5, alpha=0.5)


def explain_prediction(predictor: Predictor, prediction: Prediction, path: str | os.PathLike) -> Path:
    """Write the explanation figure of ``prediction`` (see the module docstring) as a PNG.

    Args:
        predictor: the predictor that made the prediction.
        prediction: from :meth:`Predictor.predict` (or :meth:`Predictor.predict_map`).
        path: the PNG to write (parent folders are created).

    Returns:
        The path written; the image is :data:`EXPLAIN_SIZE` (width, height) pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)
    from matplotlib.figure import Figure  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    if prediction.map is None:
        raise ConfigError("This prediction holds no flow map to explain; make it with Predictor.predict().")
    out = Path(path).expanduser()
    if out.suffix.lower() != ".png":
        raise ConfigError(f"explain (--explain) writes a PNG; give a file name ending in .png, got {out}.")
    writable_parent(out, "explanation figure")
    flow_map = np.asarray(prediction.map, dtype=np.float32)
    size = flow_map.shape[-1]
    with predictor.torch_threads():
        ev = model_evidence(predictor, flow_map, prediction.landmarks)
    result = prediction.result
    face = prediction.face
    if face is not None:
        background = cv2.cvtColor(face, cv2.COLOR_BGR2RGB) if face.ndim == 3 else np.repeat(face[..., None], 3, 2)
    else:  # a map without its clip: the strain channel stands in for the face
        strain = flow_map[2] / max(float(flow_map[2].max()), 1e-6)
        background = np.repeat((0.15 + 0.85 * strain)[..., None], 3, axis=2)
    side = background.shape[0]

    fig = Figure(figsize=(EXPLAIN_SIZE[0] / _DPI, EXPLAIN_SIZE[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.80, bottom=0.02, wspace=0.06)
    probs = ", ".join(f"{c} {p:.2f}" for c, p in sorted(prediction.probabilities.items(), key=lambda kv: -kv[1]))
    frames = ""
    if prediction.onset is not None:
        estimated = " (estimated)" if prediction.apex_estimated else ""
        frames = f"  |  onset {prediction.onset}, apex {prediction.apex}{estimated}"
    name = Path(prediction.clip).name if prediction.clip else ("clip" if result is not None else "flow map")
    fig.suptitle(f"{name}: {prediction.class_name}   ({probs})   [{predictor.checkpoint.model_name}]{frames}",
                 fontsize=12)

    ax = axes[0]
    ax.imshow(background.astype(np.float32) / (255.0 if background.max() > 1.0 else 1.0))
    heat = cv2.resize(ev.heat.astype(np.float32), (side, side), interpolation=cv2.INTER_NEAREST
                      if ev.kind != "saliency" else cv2.INTER_LINEAR)
    if ev.kind == "dtsm" and ev.kept is not None:  # dropped tokens' patches dimmed, kept ones tinted by weight
        kept = cv2.resize(ev.kept.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST) > 0
        ax.imshow(np.zeros_like(heat), cmap="gray", alpha=np.where(kept, 0.0, 0.6), vmin=0, vmax=1)
        ax.imshow(heat, cmap="autumn_r", alpha=np.where(kept, 0.05 + 0.3 * heat, 0.0), vmin=0, vmax=1)
    else:
        ax.imshow(heat, cmap="inferno", alpha=np.clip(heat, 0, 1) * 0.65, vmin=0, vmax=1)
    _grid_lines(ax, ev.grid, side)
    _outline_cells(ax, ev.kept, ev.grid, side, "cyan")
    if ev.shares is not None and ev.grid:
        cell = side / ev.grid
        for (r, c), share in np.ndenumerate(ev.shares):
            if share >= 0.005:
                ax.text((c + 0.5) * cell - 0.5, (r + 0.5) * cell - 0.5, f"{100 * share:.0f}%", ha="center",
                        va="center", fontsize=8, color="white", fontweight="bold",
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.45, "linewidth": 0})
    ax.set_title(f"decision: {ev.note}", fontsize=9)

    ax = axes[1]
    if result is not None and result.flow is not None:
        flow = result.flow
        gray = cv2.cvtColor(background.astype(np.float32) / (255.0 if background.max() > 1.0 else 1.0),
                            cv2.COLOR_RGB2GRAY)
        fs = flow.shape[0]
        if gray.shape[0] != fs:
            gray = cv2.resize(gray, (fs, fs), interpolation=cv2.INTER_AREA)
        colour = flow_to_rgb(flow)
        ax.imshow(np.clip(0.45 * gray[..., None] + 0.75 * colour, 0.0, 1.0))
        step = max(1, fs // 16)
        ys, xs = np.mgrid[step // 2 : fs : step, step // 2 : fs : step]
        u, v = flow[ys, xs, 0], flow[ys, xs, 1]
        ax.quiver(xs, ys, u, v, color="white", angles="xy", scale_units="xy",
                  scale=max(float(np.hypot(u, v).max()), 1e-6) / (0.9 * step), width=0.006)
        ax.set_xlim(-0.5, fs - 0.5)
        ax.set_ylim(fs - 0.5, -0.5)
        mag = np.hypot(flow[..., 0], flow[..., 1])
        ax.set_title(f"flow (max {mag.max():.2f} px, mean {mag.mean():.2f} px)", fontsize=9)
    else:
        ax.imshow(flow_to_rgb(np.stack([flow_map[0] - 127.5, flow_map[1] - 127.5], axis=-1)))
        ax.set_title("flow (from the map; relative)", fontsize=9)

    for ax, channel, title in zip(axes[2:], range(3), ("u (horizontal)", "v (vertical)", "strain")):
        ax.imshow(flow_map[channel], cmap="coolwarm" if channel < 2 else "magma", vmin=0, vmax=255)
        _grid_lines(ax, ev.grid, size)
        _outline_cells(ax, ev.kept, ev.grid, size, "black")
        ax.set_title(f"model input: {title}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(out, dpi=_DPI, format="png")
    return out


__all__ = ["EXPLAIN_SIZE", "Evidence", "explain_prediction", "flow_to_rgb", "model_evidence"]

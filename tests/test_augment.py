"""Augmentation that respects flow physics (issue 13): rotations turn the vectors with the pixels; mixup and
CutMix mix the labels with exactly the maps' weights; the flip mirrors u."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from epir.config import TrainConfig
from epir.data.augment import cutmix, mix_batch, mixup, rotate_scale_flow, rotate_scale_maps
from epir.engine import train as train_mod


def test_a_translation_field_stays_one_rotated_by_the_angle() -> None:
    """A uniform field (every pixel moves by the same vector) is still uniform after the face turns, and its
    vector has turned by the angle and grown by the scale: f'(p) = s R f(R^-1 p / s)."""
    flow = torch.zeros(2, 3, 28, 28)
    flow[:, 0], flow[:, 1], flow[:, 2] = 1.5, -0.5, 7.0
    angle = torch.tensor([math.radians(30.0), math.radians(-90.0)])
    scale = torch.tensor([1.0, 1.2])
    out = rotate_scale_flow(flow, angle, scale)
    for b in range(2):
        c, s = math.cos(angle[b]), math.sin(angle[b])
        k = float(scale[b])
        u, v = k * (c * 1.5 - s * -0.5), k * (s * 1.5 + c * -0.5)
        torch.testing.assert_close(out[b, 0], torch.full((28, 28), u), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[b, 1], torch.full((28, 28), v), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[b, 2], torch.full((28, 28), 7.0))  # strain, a scalar: unchanged
    assert math.hypot(float(out[0, 0, 0, 0]), float(out[0, 1, 0, 0])) == pytest.approx(math.hypot(1.5, 0.5), 1e-5)


def test_a_quarter_turn_moves_pixels_and_turns_vectors() -> None:
    """A 90-degree turn of a single moving pixel: the pixel lands where the rotation takes it, and its
    horizontal vector becomes vertical."""
    flow = torch.zeros(1, 3, 8, 8)
    flow[0, 0, 1, 5] = 1.0  # u = 1 at row 1, column 5
    flow[0, 2, 1, 5] = 1.0
    out = rotate_scale_flow(flow, torch.tensor([math.pi / 2]))
    # with x right and y down, R(90) takes (x, y) relative to the centre 3.5 to (-y, x)
    r, c = np.unravel_index(int(out[0, 2].argmax()), (8, 8))
    assert (r, c) == (5, 6)
    assert abs(float(out[0, 0, r, c])) < 1e-5 and float(out[0, 1, r, c]) == pytest.approx(1.0, abs=1e-5)


def test_rotating_normalised_maps_keeps_them_maps() -> None:
    """On min-max normalised maps the result is again 0-255 per channel, and a zero angle changes nothing."""
    torch.manual_seed(0)
    maps = torch.rand(3, 3, 28, 28) * 255
    maps = (maps - maps.amin((-2, -1), keepdim=True)) / (maps.amax((-2, -1), keepdim=True)
                                                          - maps.amin((-2, -1), keepdim=True)) * 255
    out = rotate_scale_maps(maps, torch.tensor([0.3, -0.2, 0.1]), torch.tensor([1.0, 0.9, 1.1]))
    torch.testing.assert_close(out.amin((-2, -1)), torch.zeros(3, 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.amax((-2, -1)), torch.full((3, 3), 255.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(rotate_scale_maps(maps, torch.zeros(3)), maps, atol=1e-3, rtol=0)


def test_mixup_mixes_labels_with_the_maps_weights() -> None:
    x = torch.rand(6, 3, 4, 4) * 255
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, ya, yb, lam = mixup(x, y, 0.4, torch.Generator().manual_seed(0))
    assert 0.5 <= lam <= 1.0 and torch.equal(ya, y)
    # every mixed map is lam * its own + (1 - lam) * the map whose label is yb
    for i in range(6):
        partners = [j for j in range(6) if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-4)]
        assert partners and int(y[partners[0]]) == int(yb[i])


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 3, 28, 28).clone()  # map i = i
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, ya, yb, lam = cutmix(x, y, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(ya, y)
    for i in range(6):
        other = mixed[i][mixed[i] != i]
        if not other.numel():  # paired with itself (a permutation may fix a map): nothing changes, y_b = y_a
            assert int(yb[i]) == int(y[i])
            continue
        own = (mixed[i] == i).float().mean()
        assert float(own) == pytest.approx(lam, abs=1e-6)  # the share of its own pixels is the label weight
        assert int(y[int(other[0])]) == int(yb[i]) and (other == other[0]).all()  # one partner, its label
    i = next(i for i in range(6) if (mixed[i] != i).any())
    box = mixed[i, 0] != i
    rows, cols = torch.nonzero(box, as_tuple=True)
    if rows.numel():  # the pasted region is one rectangle, the same in every channel
        assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert torch.equal(mixed[i, 0] != i, mixed[i, 2] != i)


def test_mix_batch_picks_mixup_cutmix_or_nothing() -> None:
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    g = torch.Generator().manual_seed(0)
    same, ya, yb, lam = mix_batch(x, y, 0.0, 0.0, g)
    assert same is x and lam == 1.0 and torch.equal(yb, y)
    kinds = set()
    for _ in range(20):
        mixed, _, _, lam = mix_batch(x, y, 0.4, 1.0, g)
        # a CutMix leaves some pixels exactly as they were; a mixup with lam < 1 changes every pixel
        kinds.add("cutmix" if bool((mixed == x).any()) else "mixup")
    assert kinds == {"cutmix", "mixup"}


@pytest.mark.parametrize("switch", [{"mixup": 0.4}, {"cutmix": 1.0}])
def test_the_training_loss_uses_the_same_weight_as_the_maps(switch, monkeypatch) -> None:
    """The step's loss is lam CE(y_a) + (1 - lam) CE(y_b) with the lam the maps were mixed with."""
    mixes: list[tuple] = []
    real = train_mod.mix_batch

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        mixes.append(out)
        return out

    monkeypatch.setattr(train_mod, "mix_batch", spy)
    checked: list[float] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3 * 8 * 8, 3)

        def forward(self, x):
            return self.lin(x.flatten(1))

        def forward_with_loss(self, x, y, ce):
            logits = self(x)
            _, ya, yb, lam = mixes[-1]
            expected = lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb)
            loss = ce(logits, y)
            torch.testing.assert_close(loss, expected)
            checked.append(lam)
            return loss, logits

    cfg = replace(TrainConfig(epochs=1, batch_size=8, hflip=0.0), **switch)
    x, y = torch.rand(8, 3, 8, 8) * 255, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    train_mod.fit(Probe(), x, y, cfg, seed=0, num_classes=3)
    assert len(checked) == 1 and 0.5 <= checked[0] <= 1.0


def test_map_median_is_the_lower_middle_pixel_as_a_sort_gives_it_and_while_exporting() -> None:
    """map_median selects (torch.median) in eager mode and sorts while a model is exported (ONNX has no median);
    both give the element a sort puts at (n - 1) // 2: odd and even pixel counts, ties, negative values."""
    from epir.data.augment import map_median

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 2, 28, 28), (3, 2, 4, 4), (2, 3, 5, 7)]:
        x = (torch.randn(shape, generator=g) * 40).round()  # rounded: many ties
        flat = x.flatten(2)
        by_sort = flat.sort(dim=-1).values[..., (flat.shape[-1] - 1) // 2]
        assert torch.equal(map_median(x), by_sort)

    class Median(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return map_median(x)

    x = (torch.randn(2, 2, 6, 6, generator=g) * 40).round()
    exported = torch.export.export(Median(), (x,))
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("sort" in op for op in ops) and not any("median" in op for op in ops)
    assert torch.equal(exported.module()(x), map_median(x))


def test_recentring_puts_no_motion_at_zero_in_every_map() -> None:
    """train.input_norm=recentre: u and v minus their own median, so a map whose still level is 100 and one
    whose still level is 30 (the same motion) become the same; strain is left alone; the fit sees only x."""
    from epir.data.augment import recentre_maps
    from epir.engine.train import InputNorm

    base = torch.zeros(1, 3, 28, 28)
    base[0, :2, 10:13, 10:13] = 50.0  # a small moving patch; the rest of the face is still
    base[0, 2, 10:13, 10:13] = 200.0
    a, b = base.clone(), base.clone()
    a[:, :2] += 100.0
    b[:, :2] += 30.0
    ra, rb = recentre_maps(torch.cat([a, b]))
    torch.testing.assert_close(ra, rb)
    assert float(ra[0, 0, 0]) == 0.0 and float(ra[0, 11, 11]) == 50.0
    torch.testing.assert_close(ra[2], base[0, 2])
    norm = InputNorm.fit("recentre", torch.cat([a, b]))
    assert norm.recentre
    torch.testing.assert_close(norm(a), norm(b))
    with pytest.raises(Exception, match="train.input_norm"):
        InputNorm.fit("median", a)

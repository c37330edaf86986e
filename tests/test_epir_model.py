"""EPIR's components do what docs/epir-design.md says: DNSPT shifts, token counts, ToMe mass preservation,
ITALS' masked diagonal, DTSM's k, the switches, the parameter budget."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from epir.errors import ConfigError
from epir.losses import supervised_contrastive_loss
from epir.models import create_model
from epir.models.epir import (
    DNSPT,
    DTSM,
    EPIR,
    ITALS,
    AffineShifts,
    EarlySelect,
    FixedShifts,
    MeanPool,
    PatchEmbedding,
    RefinedShifts,
    TokenIntegration,
    block_keys,
    cut_patches,
    stage_token_counts,
)
from epir.models.layers import Attention

#: HTNet's 139,582,982 parameters times the 1.6% the abstract claims.
PARAM_BUDGET = 2_233_327


def tiny(**kwargs) -> EPIR:
    torch.manual_seed(0)
    # patch 4 (a 7x7 grid, 49 tokens) exercises merging and selection on more tokens than the default patch 7
    return create_model("epir", **{"dim": 16, "heads": 2, "projection_dim": 8, "patch_size": 4, **kwargs})


# ---- DNSPT ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shifts", "offsets"),
    [
        ("diagonal", [(-2, -2), (-2, 2), (2, -2), (2, 2)]),  # up-left, up-right, down-left, down-right
        ("axial", [(-2, 0), (2, 0), (0, -2), (0, 2)]),  # up, down, left, right
        ("both", [(-2, -2), (-2, 2), (2, -2), (2, 2), (-2, 0), (2, 0), (0, -2), (0, 2)]),  # diagonal, then axial
    ],
)
def test_fixed_shifts_move_a_one_hot_pixel_by_half_a_patch(shifts: str, offsets: list) -> None:
    tok = DNSPT(in_channels=1, patch_size=4, dim=8, shifts=shifts, refine=False)
    assert type(tok.shift) is FixedShifts and tok.offsets == offsets
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 13] = 1.0
    stacked = tok.shifted(x)
    assert stacked.shape == (1, 1 + len(offsets), 28, 28)
    assert torch.equal(stacked[0, 0], x[0, 0])  # channel block 0 is the input itself
    for k, (dy, dx) in enumerate(offsets, start=1):
        expected = torch.zeros(28, 28)
        expected[10 + dy, 13 + dx] = 1.0
        assert torch.equal(stacked[0, k], expected), f"copy {k} should move the pixel by {(dy, dx)}"


def test_shift_size_sets_how_far_the_copies_move_and_is_checked() -> None:
    """model.shift_size: every copy moves by that many pixels instead of half a patch; the projection's input grows
    with the number of copies (shifts=both), never with the distance; nonsense is one line."""
    for size in (1, 5):
        tok = DNSPT(in_channels=1, patch_size=4, dim=8, shifts="both", refine=False, shift_size=size)
        assert {max(abs(dy), abs(dx)) for dy, dx in tok.offsets} == {size}
        x = torch.zeros(1, 1, 28, 28)
        x[0, 0, 10, 13] = 1.0
        stacked = tok.shifted(x)
        for k, (dy, dx) in enumerate(tok.offsets, start=1):
            assert stacked[0, k, 10 + dy, 13 + dx] == 1.0
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(create_model("epir", shift_size=1)) == count(create_model("epir")) == 99_585
    assert count(create_model("epir", shifts="both")) == 129_093  # documented in the factory's docstring
    assert create_model("epir").tokenizer.offsets == create_model("epir", shift_size=3).tokenizer.offsets
    assert create_model("epir", shift_size=0).tokenizer.offsets == create_model("epir").tokenizer.offsets
    for bad in (-1, 28):
        with pytest.raises(ConfigError, match=f"model.shift_size must be a whole number of pixels from 1 to 27.*got "
                                              f"{bad}"):
            create_model("epir", shift_size=bad)
    for bad in (2.5, True, "1"):
        with pytest.raises(ConfigError, match=f"model.shift_size: expected int, got {re.escape(repr(bad))}"):
            create_model("epir", shift_size=bad)
    with pytest.raises(ConfigError, match="model.dnspt=false turns them off"):
        create_model("epir", shift_size=1, dnspt=False)
    with pytest.raises(ConfigError, match="model.shifts must be one of diagonal, axial, both, none, got 'all'"):
        create_model("epir", shifts="all")


def test_patch_size_one_is_refused_only_where_the_copies_would_not_move() -> None:
    """At patch 1 half a patch is 0 pixels, so DNSPT's copies would be the input again: that alone is refused, in one
    line naming the ways out; copies moved a set distance, no copies, or no DNSPT build and run."""
    with pytest.raises(ConfigError, match=r"half a patch \(patch_size // 2\), which is 0 pixels at "
                                          r"model.patch_size=1; set model.shift_size >= 1 or model.shifts=none"):
        create_model("epir", image_size=4, patch_size=1)
    with pytest.raises(ConfigError, match=r"which is 0 pixels at model.patch_size=1"):
        DNSPT(in_channels=3, patch_size=1, dim=8)
    for kwargs in ({"shift_size": 1}, {"shifts": "none"}, {"dnspt": False}):
        model = create_model("epir", image_size=4, patch_size=1, **kwargs).eval()
        assert model.num_patches == 16 and model(torch.randn(2, 3, 4, 4)).shape == (2, 3)


def test_shifts_none_is_the_dual_norm_projection_of_the_input_alone() -> None:
    """model.shifts=none: no copies, nothing to refine; the projection sees the input's patches only."""
    tok = DNSPT(in_channels=3, patch_size=7, dim=8, shifts="none")
    x = torch.randn(2, 3, 28, 28)
    assert tok.offsets == [] and torch.equal(tok.shifted(x), x) and not list(tok.shift.parameters())
    assert tok.proj.in_features == 3 * 7 * 7 and tok(x).shape == (2, 16, 8)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(create_model("epir", shifts="none")) == 70_077  # documented in the factory's docstring
    with pytest.raises(ConfigError, match="model.shifts=none makes none; drop one of the two"):
        create_model("epir", shifts="none", shift_size=2)
    with pytest.raises(ConfigError, match="model.shifts=none turns that off; drop one of the two"):
        create_model("epir", shifts="none", refine_transform="affine")


def test_cut_patches_windows_reach_overlap_pixels_past_each_patch() -> None:
    """model.patch_overlap: each token's window is its patch and ``o`` pixels of the neighbours on every side, in the
    same (row, column, channel) order as the plain cut, zeros past the border; overlap 0 is the plain cut."""
    x = torch.randn(2, 3, 28, 28)
    plain = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=7, p2=7)
    assert torch.equal(cut_patches(x, 7), plain) and torch.equal(cut_patches(x, 7, 0), plain)
    windows = cut_patches(x, 7, 3).reshape(2, 16, 13, 13, 3)
    assert torch.equal(windows[:, :, 3:10, 3:10].reshape(2, 16, -1), plain)  # the centre is the patch itself
    assert torch.equal(windows[0, 5].permute(2, 0, 1), x[0, :, 4:17, 4:17])  # token (1, 1): rows and columns 4..16
    assert windows[:, 0, :3].abs().sum() == 0 and windows[:, 0, :, :3].abs().sum() == 0  # past the top-left: zeros
    one_hot = torch.zeros(1, 1, 28, 28)
    one_hot[0, 0, 10, 13] = 1.0  # in patch (1, 1), one pixel from patch (1, 2)'s left edge
    seen = cut_patches(one_hot, 7, 3).reshape(16, 13, 13).sum(dim=(1, 2))
    assert seen.nonzero().flatten().tolist() == [5, 6]  # its own token and the right-hand neighbour's


def test_patch_overlap_grows_the_projection_and_is_checked() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for kwargs, params in [({"patch_overlap": 3}, 189_585), ({"patch_overlap": 3, "shifts": "none"}, 88_077),
                           ({"patch_overlap": 3, "dnspt": False}, 86_967)]:  # documented in the factory's docstring
        model = create_model("epir", **kwargs)
        assert count(model) == params and model.num_patches == 16
        assert model.tokenizer.proj.in_features % (13 * 13) == 0
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 3)
    for bad in (-1, 8):
        with pytest.raises(ConfigError, match=f"model.patch_overlap must be a whole number of pixels from 0 .* to "
                                              f"model.patch_size \\(7: .*got {bad}"):
            create_model("epir", patch_overlap=bad)
    with pytest.raises(ConfigError, match="model.patch_overlap: expected int, got 1.5"):
        create_model("epir", patch_overlap=1.5)


def test_flow_magnitude_is_the_speed_of_the_recentred_flow() -> None:
    """model.flow_magnitude: a fourth channel sqrt(u'^2 + v'^2), u and v minus each map's own median; strain is not
    used, a per-channel affine normalisation before it only rescales u' and v', and every copy reads four channels."""
    from epir.models.epir import with_flow_magnitude

    x = torch.zeros(1, 3, 5, 5)
    x[0, 0] = 10.0  # u: still at 10 (the median) everywhere but one pixel
    x[0, 1] = -2.0
    x[0, 0, 1, 2], x[0, 1, 1, 2] = 13.0, 2.0  # that pixel moves by (3, 4): speed 5
    x[0, 2] = torch.randn(5, 5)  # strain plays no part
    out = with_flow_magnitude(x)
    assert out.shape == (1, 4, 5, 5) and torch.equal(out[:, :3], x)
    expected = torch.zeros(5, 5)
    expected[1, 2] = 5.0
    torch.testing.assert_close(out[0, 3], expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(with_flow_magnitude(x * torch.tensor([2.0, 2.0, 1.0])[:, None, None] + 7)[0, 3],
                               2 * expected, atol=2e-3, rtol=0)  # an equal scale on u and v scales the speed
    still = torch.full((1, 3, 4, 4), 100.0, requires_grad=True)  # no motion anywhere: a finite input gradient
    (grad,) = torch.autograd.grad(with_flow_magnitude(still)[:, 3].sum(), still)
    assert torch.isfinite(grad).all()

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    model = create_model("epir", flow_magnitude=True)
    assert count(model) == 111_871 and model.tokenizer.proj.in_features == 5 * 4 * 7 * 7  # the factory's docstring
    assert count(create_model("epir", flow_magnitude=True, shifts="none", patch_overlap=3)) == 96_527
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 3)
    assert model.tokenize(torch.randn(2, 3, 28, 28)).shape == (2, 16, 48)  # the user's 3 channels, 4 inside
    with pytest.raises(ConfigError, match=r"model.flow_magnitude computes each pixel's speed from the first two input "
                                          r"channels \(u, v\), and model.in_channels is 1"):
        create_model("epir", flow_magnitude=True, in_channels=1)


def test_fixed_shifts_zero_fill_at_the_border() -> None:
    tok = DNSPT(in_channels=1, patch_size=4, dim=8, refine=False)
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 0, 0] = 1.0
    copies = tok.shift(x)
    assert copies[0, 0].sum() == 0  # moved up-left out of the image: gone, nothing wraps around
    assert copies[0, 3, 2, 2] == 1.0 and copies[0, 3].sum() == 1


def test_refined_shifts_start_exactly_as_fixed_shifts_and_are_learnable() -> None:
    fixed = DNSPT(in_channels=3, patch_size=4, dim=8, refine=False)
    refined = DNSPT(in_channels=3, patch_size=4, dim=8, refine=True)
    assert isinstance(refined.shift, RefinedShifts)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(refined.shift(x), fixed.shift(x), atol=1e-6, rtol=0)
    assert refined.shift.weight.requires_grad and refined.shift.weight.numel() == 4 * 3 * 9
    assert sum(p.numel() for p in fixed.shift.parameters()) == 0


def test_affine_shifts_start_as_fixed_shifts_and_are_learnable() -> None:
    """model.refine_transform=affine: one 2x3 matrix per copy, starting at the copy's integer shift (equal to
    within float rounding of the grid's coordinates), shared by the channels; the gradient reaches every matrix."""
    for shifts in ("diagonal", "axial"):
        fixed = DNSPT(in_channels=3, patch_size=4, dim=8, shifts=shifts, refine=False)
        affine = DNSPT(in_channels=3, patch_size=4, dim=8, shifts=shifts, refine_transform="affine", image_size=28)
        assert isinstance(affine.shift, AffineShifts) and affine.shift.theta.shape == (4, 2, 3)
        x = torch.randn(2, 3, 28, 28)
        torch.testing.assert_close(affine.shift(x), fixed.shift(x), atol=1e-4, rtol=0)
    affine.shift(x).square().sum().backward()
    assert affine.shift.theta.grad is not None and bool((affine.shift.theta.grad.abs().sum(dim=(1, 2)) > 0).all())


def test_an_affine_copy_moves_by_its_translation_and_turns_by_its_rotation() -> None:
    """The affine map's convention: a translation of 2 * d / size in the matrix moves a copy by d more pixels (so
    one more pixel down is the integer shift's copy one row lower), and a quarter turn turns the map's pixels."""
    shift = AffineShifts(offsets=[(0, 0)], image_size=28)
    x = torch.randn(1, 2, 28, 28)
    with torch.no_grad():
        shift.theta[0, 1, 2] = -2.0 * 3 / 28  # 3 pixels down
    torch.testing.assert_close(shift(x), F.pad(x, (0, 0, 3, 0))[..., :28, :], atol=1e-4, rtol=0)
    with torch.no_grad():
        shift.theta[0] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # samples (x, y) <- (-y, x)
    torch.testing.assert_close(shift(x), torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_refine_transform_is_checked_and_costs_its_parameters() -> None:
    kernel, affine = tiny(), tiny(refine_transform="affine")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(kernel) - count(affine) == 4 * 3 * 9 - 4 * 6
    assert create_model("epir", refine_transform="affine").tokenizer.shift.theta.numel() == 24
    assert type(kernel.tokenizer.shift) is RefinedShifts and type(affine.tokenizer.shift) is AffineShifts
    # neither refinement draws random numbers, and both start at the integer shifts: the same model at the start
    inputs = torch.randn(4, 3, 28, 28)
    torch.testing.assert_close(kernel.eval()(inputs), affine.eval()(inputs), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="model.refine_transform must be one of kernel, affine"):
        tiny(refine_transform="spline")
    with pytest.raises(ConfigError, match="model.refine=false turns that off"):
        tiny(refine_transform="affine", refine=False)
    with pytest.raises(ConfigError, match="model.dnspt=false turns that off"):
        tiny(refine_transform="affine", dnspt=False)


def test_dnspt_is_normed_on_both_sides_of_the_projection() -> None:
    tok = DNSPT(in_channels=3, patch_size=4, dim=8)
    assert tok.norm_in.normalized_shape == (5 * 3 * 16,) and tok.norm_out.normalized_shape == (8,)
    assert tok(torch.randn(2, 3, 28, 28)).shape == (2, 49, 8)


# ---- token integration ---------------------------------------------------------------------------------


def test_documented_token_counts_per_stage() -> None:
    model = create_model("epir")  # default: patch 7, a 4x4 grid of 16 tokens
    assert model.token_counts == [16, 11, 7] and model.pool.keep == 7  # soft selection: every final token
    assert create_model("epir", select_ratio=0.5).pool.keep == 4
    assert create_model("epir", merge=False).token_counts == [16, 16, 16]
    assert create_model("epir", patch_size=4).token_counts == [49, 33, 22]
    assert stage_token_counts(49, 4, 0.33) == [49, 33, 22, 15]
    assert stage_token_counts(49, 3, 0.5) == [49, 25, 13]
    assert create_model("epir", patch_size=4, merge=False).token_counts == [49, 49, 49]


def test_tokens_entering_each_stage_match_token_counts() -> None:
    model = tiny(depths=[1, 2, 1]).eval()
    seen = []
    for stage in model.stages:
        stage[0].register_forward_hook(lambda mod, args, kwargs, out: seen.append(args[0].shape[1]), with_kwargs=True)
    model(torch.randn(2, 3, 28, 28))
    assert seen == model.token_counts == [49, 33, 22]


def test_merge_preserves_token_sizes_and_size_weighted_mass() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 49, 8, dtype=torch.float64)
    size = torch.ones(3, 49, dtype=torch.float64)
    sources = torch.eye(49, dtype=torch.float64).expand(3, -1, -1)
    mass = (x * size[..., None]).sum(dim=1)
    for r, n in ((16, 33), (11, 22)):
        x, size, sources = TokenIntegration(r=r)(x, size, sources)
        assert x.shape == (3, n, 8) and size.shape == (3, n)
        torch.testing.assert_close(size.sum(dim=1), torch.full((3,), 49.0, dtype=torch.float64))
        torch.testing.assert_close((x * size[..., None]).sum(dim=1), mass)  # every patch still contributes
        torch.testing.assert_close(sources.sum(dim=1), torch.ones(3, 49, dtype=torch.float64))
        torch.testing.assert_close(sources.sum(dim=2), size)


def test_model_tracks_sources_of_final_tokens() -> None:
    model = tiny().eval()
    model.keep_sources = True
    model(torch.randn(2, 3, 28, 28))
    assert model.last_sources.shape == (2, 22, 49)
    assert torch.equal(model.last_sources.sum(dim=1), torch.ones(2, 49))


def test_attention_keys_are_the_keys_its_forward_attends_with() -> None:
    """Attention.keys is the key third of to_qkv, split into heads and averaged over them (ToMe's metric)."""
    torch.manual_seed(0)
    attn, x = Attention(dim=16, heads=2), torch.randn(3, 9, 16)
    seen = {}

    def spy(mod, args, out):  # the forward's own keys: the middle third of to_qkv, per head
        seen["k"] = out[..., 16:32].reshape(3, 9, 2, 8).transpose(1, 2)

    attn.to_qkv.register_forward_hook(spy)
    attn(x)
    torch.testing.assert_close(attn.keys(x), seen["k"].mean(dim=1))


def test_merging_on_keys_matches_tokens_by_the_last_blocks_keys() -> None:
    """model.merge_metric=keys: each merge's matching compares the keys of the block before it, on the tokens that
    entered that block; the features switch (default) passes no metric and matches on the tokens themselves."""
    x = torch.randn(2, 3, 28, 28)
    for metric in ("features", "keys"):
        model, entered, metrics = merges_seen(tiny(depths=[1, 2, 1], merge_metric=metric).eval(), x)
        assert len(metrics) == 2
        for i, metric_seen in enumerate(metrics):
            if metric == "features":
                assert metric_seen is None
            else:
                torch.testing.assert_close(metric_seen, block_keys(model.stages[i][-1], entered[i]))
                assert metric_seen.shape == (2, model.token_counts[i], 8)  # (B, N, dim_head)


def merges_seen(model: EPIR, x: torch.Tensor) -> tuple[EPIR, dict[int, torch.Tensor], list]:
    """Runs ``model`` on ``x``; returns it, the tokens entering each stage's last block and each merge's metric."""
    entered: dict[int, torch.Tensor] = {}
    metrics: list = []
    for i, stage in enumerate(model.stages):
        stage[-1].register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: entered.__setitem__(i, args[0]), with_kwargs=True)
    for merge in model.merges:
        merge.register_forward_pre_hook(lambda mod, args, kwargs: metrics.append(kwargs["metric"]), with_kwargs=True)
    model(x)
    return model, entered, metrics


def test_merging_on_keys_keeps_the_mass_and_changes_which_tokens_merge() -> None:
    torch.manual_seed(0)
    x, size = torch.randn(3, 49, 8, dtype=torch.float64), torch.ones(3, 49, dtype=torch.float64)
    keys = torch.randn(3, 49, 4, dtype=torch.float64)
    merged, new_size, _ = TokenIntegration(r=16)(x, size, metric=keys)
    torch.testing.assert_close((merged * new_size[..., None]).sum(dim=1), x.sum(dim=1))
    by_features, _, _ = TokenIntegration(r=16)(x, size)
    assert not torch.allclose(merged, by_features)
    same, _, _ = TokenIntegration(r=16)(x, size, metric=x)  # the tokens as the metric: the default matching
    torch.testing.assert_close(same, by_features)
    a, b = tiny().eval(), tiny(merge_metric="keys").eval()
    inputs = torch.randn(4, 3, 28, 28)
    assert a.state_dict().keys() == b.state_dict().keys()  # no parameters either way
    assert not torch.allclose(a(inputs), b(inputs))


def test_merge_metric_is_checked() -> None:
    with pytest.raises(ConfigError, match="model.merge_metric must be one of features, keys"):
        tiny(merge_metric="queries")
    with pytest.raises(ConfigError, match="model.merge=false turns it off"):
        tiny(merge_metric="keys", merge=False)


# ---- ITALS and DTSM ------------------------------------------------------------------------------------


def test_itals_puts_zero_weight_on_the_diagonal() -> None:
    model = tiny().eval()
    model.keep_attention(True)
    model(torch.randn(2, 3, 28, 28))
    maps = model.attention_maps()
    assert [m.shape[-1] for m in maps] == [49, 33, 22]
    for attn in maps:
        assert torch.equal(attn.diagonal(dim1=-2, dim2=-1), torch.zeros(attn.shape[:-1]))
        torch.testing.assert_close(attn.sum(dim=-1), torch.ones(attn.shape[:-1]))
    plain = tiny(itals=False).eval()
    plain.keep_attention(True)
    plain(torch.randn(2, 3, 28, 28))
    assert (plain.attention_maps()[0].diagonal(dim1=-2, dim2=-1) > 0).all()


def test_itals_temperature_is_learnable() -> None:
    attn = ITALS(dim=16, heads=2)
    assert attn.log_scale.requires_grad
    torch.testing.assert_close(attn.log_scale.exp(), torch.tensor(8**-0.5))


def test_dtsm_keeps_the_documented_number_of_tokens() -> None:
    model = tiny(select_ratio=0.5).eval()
    assert isinstance(model.pool, DTSM) and model.pool.keep == 11  # half of the 22 final tokens
    model(torch.randn(3, 3, 28, 28))
    sel = model.pool.last_selection
    assert sel.shape == (3, 11)
    assert all(len(set(row.tolist())) == 11 for row in sel) and sel.min() >= 0 and sel.max() < 22
    top = model.pool.last_scores.topk(11, dim=1).indices
    assert torch.equal(sel, top)
    assert tiny(merge=False, select_ratio=0.5).pool.keep == 25  # round(0.5 * 49)
    assert tiny().pool.keep == 22  # the default keeps every final token, weighted by its score


def test_select_before_last_keeps_and_fuses_tokens_before_the_last_stage() -> None:
    """select_before_last: the last stage attends over the kept tokens plus one fused token, every patch still
    accounted for; the pooling is the size-weighted mean; the scorer learns through the fusion weights."""
    model = tiny(select_ratio=0.5, select_before_last=True)
    assert isinstance(model.early_select, EarlySelect) and isinstance(model.pool, MeanPool)
    assert model.early_select.keep == 11  # half of the 22 tokens entering the last stage
    inter = model.forward_intermediates(torch.randn(3, 3, 28, 28))
    assert inter["attention"][-1].shape[-1] == 12  # 11 kept + 1 fused
    assert inter["sources"].shape[1] == 12 and torch.all(inter["sources"].sum(dim=(1, 2)) == model.num_patches)
    assert inter["selection"] is None
    model.train()
    loss, _ = model.forward_with_loss(torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 0]), F.cross_entropy)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.early_select.scorer.parameters())
    assert tiny().early_select is None  # off by default
    with pytest.raises(ConfigError, match="select_before_last"):
        tiny(select_before_last=True)  # select_ratio 1.0 keeps every token: nothing to fuse


# ---- switches, loss, budget ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("switch", "get", "on", "off"),
    [
        ("dnspt", lambda m: type(m.tokenizer), DNSPT, PatchEmbedding),
        ("refine", lambda m: type(m.tokenizer.shift), RefinedShifts, FixedShifts),
        ("merge", lambda m: None if m.merges is None else type(m.merges[0]), TokenIntegration, None),
        ("itals", lambda m: type(m.stages[0][0].attn), ITALS, Attention),
        ("dtsm", lambda m: type(m.pool), DTSM, MeanPool),
        ("contrastive", lambda m: m.projection is not None, True, False),
    ],
)
def test_each_switch_changes_the_module_it_names(switch: str, get, on, off) -> None:
    assert get(tiny(**{switch: True})) is on
    assert get(tiny(**{switch: False})) is off


def test_all_switches_off_is_a_plain_vit_that_still_trains() -> None:
    off = {k: False for k in ("dnspt", "refine", "merge", "itals", "dtsm", "contrastive")}
    model = tiny(**off).train()
    x, y = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 0])
    loss, logits = model.forward_with_loss(x, y, F.cross_entropy)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_forward_with_loss_adds_the_weighted_contrastive_term() -> None:
    model = tiny(contrastive_weight=0.3, contrastive_temperature=0.2).eval()
    x, y = torch.randn(6, 3, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, logits = model.forward_with_loss(x, y, F.cross_entropy)
    features = model.forward_features(x)
    expected = F.cross_entropy(logits, y) + 0.3 * supervised_contrastive_loss(model.projection(features), y, 0.2)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, model(x))
    plain = tiny(contrastive=False).eval()
    loss, logits = plain.forward_with_loss(x, y, F.cross_entropy)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))


# ---- the distillation token (DeiT) ----------------------------------------------------------------------


def test_a_distillation_token_is_one_more_token_and_head_averaged_into_the_prediction() -> None:
    """DeiT's token: dim * (K + 1) + K more parameters; every block sees one more token, the merges and DTSM only
    the patch tokens; the prediction is the mean of the class head's and the distillation head's logits."""
    plain, model = tiny().eval(), tiny(distill_token=True).eval()
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 16 * (3 + 1) + 3 and model.token_counts == plain.token_counts == [49, 33, 22]
    seen = []
    for stage in model.stages:
        stage[0].register_forward_hook(lambda mod, args, kwargs, out: seen.append(args[0].shape[1]), with_kwargs=True)
    x = torch.randn(3, 3, 28, 28)
    tokens, size, dist = model.forward_all(x)
    assert seen == [50, 34, 23] and tokens.shape == (3, 22, 16) and dist.shape == (3, 16)
    _, logits, distilled = model.forward_heads(x)
    torch.testing.assert_close(model(x), (logits + distilled) / 2)
    torch.testing.assert_close(distilled, model.head_dist(model.norm(dist)))
    assert plain.distill_token is None and plain.head_dist is None and plain.forward_heads(x)[2] is None
    with torch.no_grad():  # it takes part in the attention: moving it moves the patch tokens' prediction
        model.distill_token.add_(torch.randn_like(model.distill_token))
    assert not torch.allclose(model.forward_heads(x)[1], logits)
    inter = model.forward_intermediates(x)
    torch.testing.assert_close(inter["logits"], model(x))
    assert [a.shape[-1] for a in inter["attention"]] == [49, 33, 22]  # its row and column left out
    assert inter["sources"].shape == (3, 22, 49)


def test_the_teacher_term_goes_on_the_distillation_head_and_the_labels_on_the_class_head() -> None:
    model = tiny(distill_token=True, contrastive=False).eval()
    x, y = torch.randn(6, 3, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    taught: list[torch.Tensor] = []

    def distill(logits: torch.Tensor) -> torch.Tensor:
        taught.append(logits)
        return 0.25 * logits.square().mean()

    loss, logits = model.forward_with_loss(x, y, F.cross_entropy, distill=distill)
    _, cls, distilled = model.forward_heads(x)
    torch.testing.assert_close(taught[0], distilled)
    torch.testing.assert_close(loss, F.cross_entropy(cls, y) + 0.25 * distilled.square().mean())
    torch.testing.assert_close(logits, model(x))
    # without the engine's teacher term (a generic caller) the labels teach both heads
    loss, _ = model.forward_with_loss(x, y, F.cross_entropy)
    torch.testing.assert_close(loss, F.cross_entropy(cls, y) + F.cross_entropy(distilled, y))


def test_parameters_far_under_the_budget() -> None:
    n = sum(p.numel() for p in create_model("epir").parameters())
    assert n <= PARAM_BUDGET
    assert 50_000 <= n <= 500_000


def test_single_stage_and_list_arguments() -> None:
    model = tiny(depths=[2])
    assert model.token_counts == [49] and len(model.merges) == 0
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 3)
    assert tiny(depths=2).token_counts == [49]


@pytest.mark.parametrize(
    "kwargs",
    [{"patch_size": 5}, {"heads": 3}, {"merge_ratio": 0.7}, {"select_ratio": 0.0}, {"depths": []},
     {"shifts": "circular"}],
)
def test_bad_arguments_raise_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="model\\."):
        tiny(**kwargs)


def test_factory_docstring_numbers_are_the_defaults() -> None:
    """The numbers in ``epir()``'s docstring are pinned to the model they describe."""
    import re

    from epir.models.epir import epir as factory
    from epir.profiling import profile_model

    doc = factory.__doc__ or ""
    m = re.search(r"Defaults: ([\d,]+) parameters, ([\d.]+) MFLOPs per sample; tokens ([\d -> ]+), DTSM keeps (\d+)",
                  doc)
    assert m, "the docstring states the defaults"
    model = factory()
    assert int(m.group(1).replace(",", "")) == sum(p.numel() for p in model.parameters())
    assert float(m.group(2)) == round(profile_model("epir")["flops_per_sample"] / 1e6, 2)
    assert [int(t) for t in m.group(3).split("->")] == model.token_counts
    assert int(m.group(4)) == model.pool.keep


def test_forward_intermediates_is_the_forward_pass_and_leaves_no_state():
    m = create_model("epir").eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = m.forward_intermediates(x)
        torch.testing.assert_close(out["logits"], m(x))
    n_final = out["tokens"].shape[1]
    assert out["sources"].shape == (2, n_final, m.num_patches) and out["grid"] ** 2 == m.num_patches
    assert torch.allclose(out["sources"].sum(dim=(1, 2)), torch.full((2,), float(m.num_patches)))
    assert out["selection"].shape == (2, m.pool.keep) and out["scores"].shape == (2, n_final)
    assert len(out["attention"]) == sum(isinstance(a, Attention) for a in m.modules())
    assert not m.keep_sources and m.last_sources is None
    assert not any(a.keep_attention for a in m.modules() if isinstance(a, Attention))
    plain = create_model("epir", dtsm=False, merge=False).eval()
    inter = plain.forward_intermediates(x)
    assert inter["selection"] is None and inter["sources"].shape == (2, plain.num_patches, plain.num_patches)

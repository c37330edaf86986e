"""The contract every registered model keeps: tiny kwargs, forward, backward, no NaN, determinism,
batch independence in eval mode, YAML-friendly factory defaults, a recipe, and profiling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from epir.config import TrainConfig
from epir.errors import ConfigError
from epir.models import create_model, default_recipe, list_models, model_defaults
from epir.profiling import count_flops, count_parameters, measure_latency

#: Small overrides per model so the suite stays fast; models not listed use their defaults.
TINY: dict[str, dict] = {
    "epir": {"dim": 16, "heads": 2, "projection_dim": 8},
    "htnet": {"dim": 16, "heads": 2, "block_repeats": [1, 1, 1]},  # the official one has 139.6M parameters
}
#: Model variants that are switches of a registered model (issue 13's architecture levers), checked like models.
VARIANTS: dict[str, tuple[str, dict]] = {
    "epir[stem=conv]": ("epir", {"stem": "conv", "patch_size": 2}),
    "epir[patch_size=4]": ("epir", {"patch_size": 4}),
    "epir[select_before_last]": ("epir", {"select_ratio": 0.5, "select_before_last": True}),
    "epir[distill_token]": ("epir", {"distill_token": True}),
    "epir[merge_metric=keys]": ("epir", {"merge_metric": "keys"}),
    "epir[refine_transform=affine]": ("epir", {"refine_transform": "affine"}),
    "epir[shifts=both]": ("epir", {"shifts": "both"}),
    "epir[shift_size=1]": ("epir", {"shift_size": 1}),
    "epir[shifts=none]": ("epir", {"shifts": "none"}),
    "epir[patch_overlap=3]": ("epir", {"patch_overlap": 3}),
    "epir[shifts=none,patch_overlap=3]": ("epir", {"shifts": "none", "patch_overlap": 3}),
    "epir[dnspt=false,patch_overlap=3]": ("epir", {"dnspt": False, "patch_overlap": 3}),
    "epir[flow_magnitude]": ("epir", {"flow_magnitude": True}),
    "epir[flow_magnitude,stem=conv]": ("epir", {"flow_magnitude": True, "stem": "conv", "patch_size": 2}),
    "epir[plain]": ("epir", {"dnspt": False, "merge": False, "itals": False, "dtsm": False, "contrastive": False}),
}
NUM_CLASSES = 4
BATCH = 6


def base(name: str) -> tuple[str, dict]:
    """(registered model, extra kwargs) of a model or variant name."""
    return VARIANTS.get(name, (name, {}))


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model, extra = base(name)
    return create_model(model, num_classes=NUM_CLASSES, **{**TINY.get(model, {}), **extra})


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, 28, 28, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])  # repeated labels so contrastive terms have positives
    return x, y


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(model, "forward_with_loss"):
        return model.forward_with_loss(x, y, F.cross_entropy)
    logits = model(x)
    return F.cross_entropy(logits, y), logits


@pytest.fixture(params=[*list_models(), *VARIANTS])
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_output_shape_and_finite(name: str) -> None:
    model = build(name).eval()
    x, _ = batch()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = build(name).train()
    x, y = batch()
    loss, logits = training_loss(model, x, y)
    assert logits.shape == (BATCH, NUM_CLASSES) and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # DTSM's last scorer bias shifts every token's score equally: top-k and softmax are invariant to it, so its
    # gradient is exactly zero up to float rounding (it was sometimes 0.0, sometimes 1e-9): not a contract breach.
    invariant = {"pool.scorer.2.bias"}
    zero = [n for n, p in model.named_parameters()
            if p.grad is not None and p.grad.abs().sum() == 0 and n not in invariant]
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient: {missing}"
    assert not zero, f"zero gradient: {zero}"
    assert not nonfinite, f"non-finite gradient: {nonfinite}"


def test_deterministic_under_seed(name: str) -> None:
    x, y = batch()
    outs = []
    for _ in range(2):
        model = build(name, seed=3).train()
        torch.manual_seed(4)
        loss, logits = training_loss(model, x, y)
        outs.append((loss.detach(), logits.detach()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def test_eval_outputs_do_not_depend_on_the_batch(name: str) -> None:
    model = build(name).eval()
    x, _ = batch()
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(BATCH)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)


def test_factory_defaults_are_yaml_values_and_lists_are_accepted(name: str) -> None:
    name, extra = base(name)
    defaults = model_defaults(name)
    for key, value in defaults.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        assert all(isinstance(v, (bool, int, float, str)) for v in items), f"{name}.{key} = {value!r}"
    as_lists = {k: list(v) for k, v in defaults.items() if isinstance(v, tuple)}
    model = create_model(name, **{**TINY.get(name, {}), **as_lists, **extra})
    assert isinstance(model, nn.Module)
    assert isinstance(default_recipe(name), TrainConfig)


def test_profiling_works(name: str) -> None:
    model = build(name)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_flops(model) > 0
    assert measure_latency(model, batch_size=2, repeats=2, warmup=1) > 0
    assert model.training  # profiling restores the mode


def test_batchable_models_can_replay_their_training_randomness(name: str) -> None:
    """A model registered batchable passes can_batch, and a training step replayed with the draws it recorded
    equals the step drawn from the global generator in the same state (its masks can be its own when batched)."""
    from epir.engine.batched import can_batch
    from epir.models import is_batchable
    from epir.models.layers import draw, recorded_draws, replayed_draws

    model = build(name)
    if not is_batchable(base(name)[0]):
        pytest.skip("not batchable: trained one at a time")
    assert can_batch(model) == (True, "")
    x, y = batch()
    model.train()
    with torch.no_grad(), recorded_draws() as calls:
        training_loss(build(name).train(), x, y)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    with torch.no_grad():
        want = training_loss(model, x, y)[1]
    g = torch.Generator()
    g.set_state(state)
    model = build(name).train()
    with torch.no_grad(), replayed_draws([draw(c, BATCH, g) for c in calls]):
        got = training_loss(model, x, y)[1]
    torch.testing.assert_close(got, want)


#: For every registered model, argument values it cannot be built from (one each), and the argument the error names.
BAD_ARGS: dict[str, list[tuple[str, object]]] = {
    "epir": [("dim", 0), ("dim", -3), ("heads", 0), ("patch_size", 0), ("in_channels", 0), ("num_classes", 0),
             ("projection_dim", 0), ("stem_channels", 0), ("dropout", 1.5), ("drop_path", -0.1), ("mlp_ratio", 0.0),
             ("contrastive_temperature", 0.0), ("contrastive_weight", -1.0)],
    "htnet": [("dim", 0), ("patch_size", 0), ("in_channels", 0), ("mlp_ratio", 0), ("dropout", 1.0)],
    "ststnet": [("num_classes", 0), ("dropout", 1.0), ("dropout", -0.5)],
}


def test_every_model_has_bad_argument_cases() -> None:
    assert set(BAD_ARGS) == set(list_models())


@pytest.mark.parametrize("model, key, value", [(m, k, v) for m, cases in BAD_ARGS.items() for k, v in cases])
def test_a_value_a_model_cannot_be_built_from_is_one_config_error(model: str, key: str, value: object) -> None:
    """Each names the argument and what it expects, before torch sees it (no traceback from inside a layer)."""
    with pytest.raises(ConfigError, match=rf"^model\.{key}={value!r}: expected "):
        create_model(model, **{**TINY.get(model, {}), key: value})


def test_what_the_models_own_checks_miss_is_still_one_config_error(monkeypatch) -> None:
    from epir.models import factory

    def broken(*, dropout: float = 0.5) -> nn.Module:
        raise RuntimeError("Trying to create tensor with negative dimension -3")

    monkeypatch.setattr(factory.MODELS, "get", lambda name: broken)
    with pytest.raises(ConfigError, match=r"Model 'ststnet' cannot be built from model\.dropout=0\.1 \(RuntimeError: "
                                          r"Trying to create tensor.*; change those values\.$"):
        create_model("ststnet", dropout=0.1)

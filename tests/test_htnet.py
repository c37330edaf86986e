"""HTNet: the official configuration's parameter count and state dict (so official weights load unchanged),
a forward of the official model, a training step of a tiny one, and the BGR channel reversal."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from epir.errors import ConfigError
from epir.models import create_model, default_recipe
from epir.models.htnet import HTNET_CPU_RECIPE, HTNET_OFFICIAL_RECIPE, HTNet

#: Written from the official implementation's state dict (a golden file in the repository).
STATE_DICT_FILE = Path(__file__).resolve().parent / "data" / "htnet-state-dict.txt"
TINY = {"dim": 16, "heads": 2, "block_repeats": [1, 1, 2]}


@pytest.fixture(scope="module")
def official() -> HTNet:
    """The official configuration (139.6M parameters, ~0.6 GB), built once for the module."""
    torch.manual_seed(0)
    return create_model("htnet").eval()


def test_official_parameter_count(official: HTNet) -> None:
    assert sum(p.numel() for p in official.parameters()) == 139_582_982


def test_official_state_dict_keys_and_shapes(official: HTNet) -> None:
    expected = []
    for line in STATE_DICT_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            expected.append((key, tuple(ast.literal_eval(shape))))
    got = [(k, tuple(v.shape)) for k, v in official.state_dict().items()]
    assert dict(got) == dict(expected)
    assert [k for k, _ in got] == [k for k, _ in expected]  # same order as well


def test_official_forward(official: HTNet) -> None:
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 255  # raw 0-255 input
    with torch.no_grad():
        out = official(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_recipes() -> None:
    assert default_recipe("htnet") == HTNET_OFFICIAL_RECIPE
    official = HTNET_OFFICIAL_RECIPE
    assert (official.epochs, official.batch_size, official.lr, official.optimizer) == (800, 256, 5e-5, "adam")
    assert not official.shuffle and official.weight_decay == 0.0 and official.input_norm == "none"
    assert HTNET_CPU_RECIPE.epochs < official.epochs and HTNET_CPU_RECIPE.lr == official.lr


def test_tiny_model_trains_a_step() -> None:
    torch.manual_seed(0)
    model = create_model("htnet", **TINY).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 28, 28, generator=g) * 255, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_bgr_input_reverses_channels() -> None:
    torch.manual_seed(0)
    bgr = create_model("htnet", **TINY, bgr_input=True).eval()
    rgb = create_model("htnet", **TINY, bgr_input=False).eval()
    rgb.load_state_dict(bgr.state_dict())
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        torch.testing.assert_close(bgr(x), rgb(x.flip(1)))
        assert not torch.allclose(bgr(x), rgb(x))


@pytest.mark.parametrize(
    "kwargs",
    [{"block_repeats": [1, 1]}, {"patch_size": 5}, {"patch_size": 14}, {"heads": 0}, {"num_hierarchies": 0}],
)
def test_bad_arguments_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=r"model\.|patch grid"):
        create_model("htnet", **{**TINY, **kwargs})

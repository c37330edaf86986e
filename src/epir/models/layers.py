"""Shared transformer blocks, defined once: ``FeedForward``, multi-head ``Attention``, ``Dropout``, ``DropPath``
and a pre-norm ``Block``; and ``ProbabilityMean``, an ensemble of classifiers as one module.

Token tensors are ``(B, N, D)``. Blocks optionally take token *sizes* ``(B, N)``: how many input patches
each token stands for once tokens have been merged (Bolya et al., "Token Merging: Your ViT But Faster",
ICLR 2023). ``Attention`` then uses ToMe's proportional attention (adds ``log size`` to the attention
logits) so a merged token weighs as much as the tokens it replaced.

Dropout defaults to 0 everywhere: on CPU, elementwise dropout masks cost about as much as the matmuls of a
model this small (``bernoulli_`` on a (64, 49, 128) tensor takes ~4 ms), so small models here regularise
with ``DropPath`` (one Bernoulli draw per sample) instead. A rate of 0 builds no dropout module at all.

``Dropout`` and ``DropPath`` draw their masks as ``nn.Dropout`` and ``torch.rand_like`` do, from the global
generator, except inside :func:`replayed_draws`: there they take the masks they are given. Batched training
(``epir.engine.batched``) records once which draws a training step makes (:func:`recorded_draws`), draws them for
each model from that model's own generator (:func:`draw`) and replays them inside ``vmap``, so a model's masks
are those it would draw trained alone, whatever models share its batch.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

#: The valid-sample mask of the batch being trained, set by the engine's batched fold training, which pads the
#: batches of models trained together to one size. Layers that mix samples (batch normalisation) read it.
_SAMPLE_MASK: ContextVar[torch.Tensor | None] = ContextVar("epir_sample_mask", default=None)


@contextmanager
def sample_mask(valid: torch.Tensor | None) -> Iterator[None]:
    """Within the block, batch-statistics layers use only the samples where ``valid`` (B,) is true."""
    token = _SAMPLE_MASK.set(valid)
    try:
        yield
    finally:
        _SAMPLE_MASK.reset(token)


@dataclass(frozen=True)
class RandomCall:
    """One random draw of a training forward pass: a dropout mask (``kind`` "bernoulli", keep probability ``p``)
    or uniform noise (``kind`` "uniform"), of ``shape`` per sample.
    """

    kind: str
    shape: tuple[int, ...]
    p: float = 0.0


@dataclass
class _Draws:
    """The state of :func:`recorded_draws` (``given`` None: record ``calls``) or :func:`replayed_draws`."""

    given: Sequence[torch.Tensor] | None
    calls: list[RandomCall] = field(default_factory=list)
    pos: int = 0


_DRAWS: ContextVar[_Draws | None] = ContextVar("epir_draws", default=None)
#: The end of every replay error: what a mismatch between the recorded and the replayed pass means.
_REPLAY_HINT = " (a model whose random draws depend on its input cannot replay them)."


@contextmanager
def recorded_draws() -> Iterator[list[RandomCall]]:
    """Within the block, ``Dropout`` and ``DropPath`` draw nothing (their masks keep all) and the list yielded
    receives the :class:`RandomCall` of each draw they would have made, in order.
    """
    state = _Draws(given=None)
    token = _DRAWS.set(state)
    try:
        yield state.calls
    finally:
        _DRAWS.reset(token)


@contextmanager
def replayed_draws(draws: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block, ``Dropout`` and ``DropPath`` take their masks from ``draws`` in order (each
    ``(B, *shape)``, made by :func:`draw` for the calls :func:`recorded_draws` recorded) instead of the global
    generator. A pass that takes more draws, draws of other shapes, or fewer draws than given is an error.
    """
    state = _Draws(given=draws)
    token = _DRAWS.set(state)
    try:
        yield
        if state.pos != len(draws):
            raise RuntimeError(f"the training step took {state.pos} random draws, not the {len(draws)} recorded"
                               + _REPLAY_HINT)
    finally:
        _DRAWS.reset(token)


def draw(call: RandomCall, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The draw ``call`` for a batch of ``batch`` samples, from ``generator``: the same numbers the layer draws
    from the global generator when that is in ``generator``'s state (``nn.Dropout``'s ``bernoulli_`` mask,
    ``DropPath``'s ``rand_like``), on ``generator``'s device.
    """
    shape = (batch, *call.shape)
    device = None if generator is None else generator.device
    if call.kind == "uniform":
        return torch.rand(shape, generator=generator, device=device)
    return torch.empty(shape, device=device).bernoulli_(call.p, generator=generator)


def _given(kind: str, like: torch.Tensor, p: float = 0.0) -> torch.Tensor | None:
    """The draw a layer takes inside :func:`recorded_draws` (no randomness: keep all) or :func:`replayed_draws`;
    None outside both (the layer draws from the global generator).
    """
    state = _DRAWS.get()
    if state is None:
        return None
    call = RandomCall(kind, tuple(like.shape[1:]), p)
    if state.given is None:
        state.calls.append(call)
        return like.new_ones(like.shape) if kind == "bernoulli" else like.new_zeros(like.shape)
    if state.pos >= len(state.given):
        raise RuntimeError(f"the training step took more than the {len(state.given)} random draws recorded"
                           + _REPLAY_HINT)
    out = state.given[state.pos]
    state.pos += 1
    if tuple(out.shape) != tuple(like.shape):
        raise RuntimeError(f"random draw {state.pos} was recorded as {tuple(out.shape)} and is now asked for as "
                           f"{tuple(like.shape)}" + _REPLAY_HINT)
    return out


def is_batched(x: torch.Tensor) -> bool:
    """True inside ``torch.func.vmap`` (the engine's batched fold training), where ``x`` is a batched tensor."""
    return bool(torch._C._functorch.is_batchedtensor(x))


def init_vit_weights(module: nn.Module) -> None:
    """ViT initialisation (``module.apply(init_vit_weights)``): truncated normal(0.02) for Linear weights."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (the same masks from the same generator state) that replays the masks it is given inside
    :func:`replayed_draws`, as batched training does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: any shape, samples first. Returns x with elements zeroed with probability ``p`` and the rest
        scaled by 1 / (1 - p) in training; x in eval mode.
        """
        if not self.training or self.p == 0.0 or self.p == 1.0:
            return super().forward(x)
        mask = _given("bernoulli", x, 1.0 - self.p)
        if mask is None:
            return super().forward(x)
        return x * mask.div(1.0 - self.p)  # as torch's CPU dropout: input * bernoulli_(1 - p).div_(1 - p)


def dropout_or_identity(p: float) -> nn.Module:
    """:class:`Dropout` ``(p)``, or ``nn.Identity()`` for p = 0 (no mask is drawn at all)."""
    return Dropout(p) if p > 0 else nn.Identity()


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a residual branch for a whole sample with
    probability ``p`` and scale the kept ones by 1 / (1 - p). Identity in eval mode.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...). Returns x with some samples zeroed (training only)."""
        if not self.training or self.p == 0.0:
            return x
        first = x[(slice(None),) + (slice(0, 1),) * (x.ndim - 1)]  # (B, 1, ..., 1): one draw per sample
        u = _given("uniform", first)
        keep = ((torch.rand_like(first) if u is None else u) < 1.0 - self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same state dict) that, in training inside :func:`sample_mask`, computes the batch
    statistics over the valid samples only, so a padded batch normalises exactly like the unpadded one. The
    running statistics are updated as PyTorch does (unbiased variance, momentum). Outside ``sample_mask`` it is
    ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W). Returns the normalised x."""
        valid = _SAMPLE_MASK.get()
        running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        if (valid is None or not self.training or self.momentum is None or running_mean is None
                or running_var is None or tracked is None):
            return super().forward(x)
        w = valid.to(x.dtype)[:, None, None, None]
        count = w.sum() * x.shape[2] * x.shape[3]
        mean = (x * w).sum(dim=(0, 2, 3)) / count
        centred = x - mean[None, :, None, None]
        var = (centred.square() * w).sum(dim=(0, 2, 3)) / count
        with torch.no_grad():
            tracked.add_(1)
            unbiased = var * count / (count - 1).clamp_min(1.0)
            running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


class FeedForward(nn.Module):
    """The transformer MLP: Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, *, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            dropout_or_identity(dropout),
            nn.Linear(hidden_dim, dim),
            dropout_or_identity(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: tokens, shape (B, N, D). Returns (B, N, D)."""
        return self.net(x)


class Attention(nn.Module):
    """Multi-head scaled dot-product self-attention (Vaswani et al. 2017).

    Subclasses change the logits ``scale * q.k + bias`` by overriding ``scale`` and ``bias`` (see
    ``epir.models.epir.ITALS``). Set ``keep_attention = True`` to keep the last attention map, shape
    (B, heads, N, N), detached, in ``last_attention`` (for visualisation). The attention is computed
    explicitly: at 49 tokens on CPU, ``F.scaled_dot_product_attention`` was no faster in a training step.
    """

    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.dim_head = dim // heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_drop = dropout_or_identity(dropout)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), dropout_or_identity(dropout))
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def scale(self) -> torch.Tensor | float:
        """The factor on q.k: 1 / sqrt(dim_head)."""
        return self.dim_head**-0.5

    def bias(self, x: torch.Tensor) -> torch.Tensor | None:
        """x: tokens (B, N, D). Returns an additive bias on the logits, shape (N, N), or None."""
        return None

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """x: the tokens this module attends over, shape (B, N, D) (after the block's LayerNorm). Returns their keys
        averaged over the heads, (B, N, dim_head): ToMe's matching metric (Bolya et al. 2023, sec. 3). The same
        projection :meth:`forward` takes its keys from, computed again for the key rows only.
        """
        dim = self.heads * self.dim_head
        k = F.linear(x, self.to_qkv.weight[dim : 2 * dim])
        return rearrange(k, "b n (h d) -> b h n d", h=self.heads).mean(dim=1)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """x: tokens, shape (B, N, D); size: tokens' sizes, shape (B, N), or None (all 1). Returns (B, N, D)."""
        q, k, v = rearrange(self.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        dots = (q @ k.transpose(-1, -2)) * self.scale()
        bias = self.bias(x)
        if bias is not None:
            dots = dots + bias
        if size is not None:  # proportional attention: a token of size s counts as s tokens
            dots = dots + size.log()[:, None, None, :]
        attn = dots.softmax(dim=-1)
        if self.keep_attention:
            self.last_attention = attn.detach()
        out = self.attn_drop(attn) @ v
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block around a given attention module: x + attn(LN(x)), then x + MLP(LN(x)),
    each residual branch under stochastic depth ``drop_path``.
    """

    def __init__(
        self, *, dim: int, attention: nn.Module, mlp_ratio: float = 2.0, dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, hidden_dim=int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """x: tokens, shape (B, N, D); size: token sizes (B, N) or None. Returns (B, N, D)."""
        x = x + self.drop_path(self.attn(self.norm1(x), size=size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ProbabilityMean(nn.Module):
    """Classifiers of one kind as one module: the log of the mean of their class probabilities.

    ``softmax`` of the output is the members' mean probability, so the module stands wherever one classifier's
    logits are expected (an ensemble teacher: soft targets, the fold's mix, a checkpoint, the ONNX graph).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("ProbabilityMean needs at least one member.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: one member's input. Returns (B, num_classes) log mean probabilities."""
        probs = torch.stack([m(x).softmax(dim=-1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

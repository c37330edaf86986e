"""Shared transformer blocks, defined once: ``FeedForward``, multi-head ``Attention`` and a pre-norm ``Block``.

Token tensors are ``(B, N, D)``. Blocks optionally take token *sizes* ``(B, N)``: how many input patches
each token stands for once tokens have been merged (Bolya et al., "Token Merging: Your ViT But Faster",
ICLR 2023). ``Attention`` then uses ToMe's proportional attention (adds ``log size`` to the attention
logits) so a merged token weighs as much as the tokens it replaced.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def init_vit_weights(module: nn.Module) -> None:
    """ViT initialisation (``module.apply(init_vit_weights)``): truncated normal(0.02) for Linear weights."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class FeedForward(nn.Module):
    """The transformer MLP: Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, *, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: tokens, shape (B, N, D). Returns (B, N, D)."""
        return self.net(x)


class Attention(nn.Module):
    """Multi-head scaled dot-product self-attention (Vaswani et al. 2017).

    Subclasses change how the attention logits are formed by overriding ``logits`` (see
    ``epir.models.epir.ITALS``). Set ``keep_attention = True`` to keep the last attention map, shape
    (B, heads, N, N), detached, in ``last_attention`` (for visualisation).
    """

    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.dim_head = dim // heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q, k: shape (B, heads, N, dim_head). Returns attention logits, shape (B, heads, N, N)."""
        return (q @ k.transpose(-1, -2)) * self.dim_head**-0.5

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """x: tokens, shape (B, N, D); size: tokens' sizes, shape (B, N), or None (all 1). Returns (B, N, D)."""
        q, k, v = rearrange(self.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        dots = self.logits(q, k)
        if size is not None:  # proportional attention: a token of size s counts as s tokens
            dots = dots + size.log()[:, None, None, :]
        attn = dots.softmax(dim=-1)
        if self.keep_attention:
            self.last_attention = attn.detach()
        out = self.attn_drop(attn) @ v
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block around a given attention module: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, *, dim: int, attention: nn.Module, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, hidden_dim=int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """x: tokens, shape (B, N, D); size: token sizes (B, N) or None. Returns (B, N, D)."""
        x = x + self.attn(self.norm1(x), size=size)
        return x + self.mlp(self.norm2(x))

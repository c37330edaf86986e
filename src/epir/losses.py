"""Loss functions beyond the cross-entropy the engine provides."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020), eq. 2.

    With ``z_i`` the L2-normalised embeddings, ``A(i)`` every other sample of the batch and ``P(i)`` the
    other samples with the label of ``i``::

        L = mean over anchors i with P(i) non-empty of
            -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) )

    An anchor without positives (the only sample of its class in the batch) is excluded from the mean: its
    term is undefined (0/0). It still appears in the other anchors' denominators as a negative. If no anchor
    has a positive the loss is 0 (still attached to the graph, so ``backward`` works). The official code's
    extra factor ``temperature / base_temperature`` is 1 here (``base_temperature = temperature``).

    The computation has no data-dependent branch or shape, so it runs under ``torch.func.vmap`` (the engine's
    batched fold training), where ``valid`` marks the real samples of a padded batch: a padded sample is
    neither an anchor, a positive nor a negative.

    Args:
        embeddings: shape (B, D); normalised here, any scale is fine.
        labels: class indices, shape (B,).
        temperature: ``t`` above, > 0.
        valid: optional bool (B,): which samples take part (default all).

    Returns:
        The loss, a scalar tensor.
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"supervised_contrastive_loss: expected embeddings (B, D) and labels (B,), got "
            f"{tuple(embeddings.shape)} and {tuple(labels.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"supervised_contrastive_loss: temperature must be > 0, got {temperature}.")
    n = embeddings.shape[0]
    pair_ok = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)  # A(i) excludes i itself
    if valid is not None:
        valid = valid.bool()
        pair_ok = pair_ok & valid[:, None] & valid[None, :]
    positives = (labels[:, None] == labels[None, :]) & pair_ok
    num_pos = positives.sum(dim=1)
    has_pos = (num_pos > 0).to(embeddings.dtype)
    z = F.normalize(embeddings, dim=1)
    # A large finite fill instead of -inf: exp() of it is exactly 0, and a row with no partner stays finite
    # (no NaN gradient through the excluded anchors).
    logits = (z @ z.T / temperature).masked_fill(~pair_ok, -1e9)
    log_prob = torch.where(positives, logits - torch.logsumexp(logits, dim=1, keepdim=True), 0.0)
    mean_log_prob_pos = log_prob.sum(dim=1) / num_pos.clamp_min(1)
    return -(mean_log_prob_pos * has_pos).sum() / has_pos.sum().clamp_min(1.0)

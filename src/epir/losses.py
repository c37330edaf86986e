"""Loss functions beyond the cross-entropy the engine provides."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
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

    Args:
        embeddings: shape (B, D); normalised here, any scale is fine.
        labels: class indices, shape (B,).
        temperature: ``t`` above, > 0.

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
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    num_pos = positives.sum(dim=1)
    has_pos = num_pos > 0
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0
    z = F.normalize(embeddings, dim=1)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))  # A(i) excludes i itself
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(self_mask, 0.0)
    mean_log_prob_pos = (log_prob * positives).sum(dim=1)[has_pos] / num_pos[has_pos]
    return -mean_log_prob_pos.mean()

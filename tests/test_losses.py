"""Supervised contrastive loss against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from epir.losses import supervised_contrastive_loss

# Four 2-D embeddings, not unit length (the loss normalises them): after normalisation
# z0 = (1, 0), z1 = (1, 1)/sqrt(2), z2 = (0, 1), z3 = (-1, 0).
EMBEDDINGS = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-0.5, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 1])


def supcon_by_hand(z: list[tuple[float, float]], labels: list[int], t: float) -> float:
    """Khosla et al. eq. 2, written out with loops over anchors, positives and the denominator set."""
    z = [(a / math.hypot(a, b), b / math.hypot(a, b)) for a, b in z]
    dot = [[zi[0] * zj[0] + zi[1] * zj[1] for zj in z] for zi in z]
    terms = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(dot[i][a] / t) for a in range(len(z)) if a != i)
        terms.append(-sum(math.log(math.exp(dot[i][p] / t) / denominator) for p in positives) / len(positives))
    return sum(terms) / len(terms)


def test_matches_hand_computed_value_at_temperature_one() -> None:
    # With t = 1 and s = 1/sqrt(2) = 0.70711, the four anchors' log-probabilities of their one positive are
    #   anchor 0: s - ln(e^s + e^0 + e^-1)   = -0.51549
    #   anchor 1: s - ln(e^s + e^s + e^-s)   = -0.80787
    #   anchor 2: 0 - ln(e^0 + e^s + e^0)    = -1.39331
    #   anchor 3: 0 - ln(e^-1 + e^-s + e^0)  = -0.62109
    # and the loss is minus their mean.
    s = 1 / math.sqrt(2)
    log_probs = [
        s - math.log(math.exp(s) + 1 + math.exp(-1)),
        s - math.log(2 * math.exp(s) + math.exp(-s)),
        -math.log(2 + math.exp(s)),
        -math.log(math.exp(-1) + math.exp(-s) + 1),
    ]
    expected = -sum(log_probs) / 4
    assert expected == pytest.approx(0.83444, abs=1e-4)
    loss = supervised_contrastive_loss(EMBEDDINGS, LABELS, temperature=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_matches_explicit_formula(temperature: float) -> None:
    expected = supcon_by_hand(EMBEDDINGS.tolist(), LABELS.tolist(), temperature)
    loss = supervised_contrastive_loss(EMBEDDINGS, LABELS, temperature=temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_anchor_without_positive_is_excluded_but_stays_a_negative() -> None:
    labels = torch.tensor([0, 0, 1, 2])  # anchors 2 and 3 have no positive
    expected = supcon_by_hand(EMBEDDINGS.tolist(), labels.tolist(), 0.5)
    loss = supervised_contrastive_loss(EMBEDDINGS, labels, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    # Only anchors 0 and 1 count, but samples 2 and 3 are in their denominators:
    without_negatives = supervised_contrastive_loss(EMBEDDINGS[:2], labels[:2], temperature=0.5)
    assert loss.item() != pytest.approx(without_negatives.item())


def test_no_positive_anywhere_gives_zero_with_a_graph() -> None:
    embeddings = EMBEDDINGS.clone().requires_grad_(True)
    loss = supervised_contrastive_loss(embeddings, torch.tensor([0, 1, 2, 3]), temperature=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_scale_invariant_and_differentiable() -> None:
    embeddings = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = supervised_contrastive_loss(embeddings, labels, 0.1)
    assert loss.item() == pytest.approx(supervised_contrastive_loss(embeddings * 7.0, labels, 0.1).item())
    loss.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="temperature"):
        supervised_contrastive_loss(EMBEDDINGS, LABELS, temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        supervised_contrastive_loss(EMBEDDINGS, LABELS[:3], temperature=0.1)

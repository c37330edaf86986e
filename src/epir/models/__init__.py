"""Models: ``create_model(name, **kwargs)`` over a registry of factories (:mod:`epir.models.factory`).

A model takes optical-flow maps ``(B, 3, H, W)`` (channels u, v, strain; 0-255 unless the recipe's
``input_norm`` says otherwise) and returns logits ``(B, num_classes)``. A model may also define
``forward_with_loss(x, y, ce) -> (loss, logits)`` to add its own loss terms to the cross-entropy ``ce``
the engine passes in (EPIR adds a supervised contrastive term); the engine uses it when present, and
``forward_intermediates(x) -> dict`` (tokens, merge sources, selection, attention) for explanation.

Add a model: one file here with a factory decorated ``@register_model(...)`` (from :mod:`epir.models.factory`),
imported below.
"""
from __future__ import annotations

# Every model module, imported so that registration is complete.
from epir.models import epir, htnet, ststnet  # noqa: F401
from epir.models.factory import (
    AUTO_FOLD_BATCH,
    MODELS,
    accepted_input_size,
    auto_fold_batch,
    batches_well,
    build_model,
    create_model,
    default_recipe,
    describe_args,
    is_batchable,
    list_models,
    list_recipes,
    model_defaults,
    recipe_settings,
    register_model,
    resolve_model_args,
)
from epir.models.layers import ProbabilityMean

__all__ = ["AUTO_FOLD_BATCH", "MODELS", "ProbabilityMean", "accepted_input_size", "auto_fold_batch", "batches_well",
           "build_model", "create_model", "default_recipe", "describe_args", "is_batchable", "list_models",
           "list_recipes", "model_defaults", "recipe_settings", "register_model", "resolve_model_args"]

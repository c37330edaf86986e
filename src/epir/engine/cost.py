"""What one prediction of a recipe costs: the parameters and forward FLOPs of every network that predicts a fold.

A recipe predicts with more than its model's one forward pass: ``train.tta=flip`` runs the network on each map
and on its mirror, ``train.ensemble`` and ``train.snapshots`` average several networks, a teacher mixed into the
predictions (``train.distill_mix`` > 0) runs its own members and passes, and ``data.input_transform`` (``smooth``)
convolves the map first. :func:`prediction_cost` counts all of it, so that a table can put the whole beside the
model's own figure (issue 13: a teacher is counted separately, an ensemble's total is reported), and
:func:`prediction_module` builds that whole as one untrained module, for timing it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from epir.config import ModelConfig, RunConfig, TrainConfig
from epir.data.transforms import transform_maps
from epir.engine.selection import candidate_configs, member_configs, teacher_config
from epir.engine.train import InputNorm
from epir.models import ProbabilityMean, build_model
from epir.profiling import SAMPLE_SHAPE, count_flops, count_function_flops, count_parameters, measure_latency


@dataclass(frozen=True)
class PredictionCost:
    """The cost of one prediction of a recipe, per sample.

    Attributes:
        params: the model's own parameters (one network).
        params_total: the parameters of every network that predicts: each ensemble member's snapshots, and the
            teacher's members when the teacher is mixed into the predictions.
        flops: one forward pass of the model (:func:`~epir.profiling.count_flops`), or None where the FLOP
            counter cannot trace it.
        flops_total: one whole prediction: the input transform, then every network that predicts times its
            forward passes (2 with ``train.tta=flip``); None where ``flops`` is.
        teacher_params: the teacher's parameters, all its members (0 without ``train.distill``).
        members: each in-fold ensemble member's own network (``train.ensemble``; ``train.member_overrides`` may give
            a member model arguments of its own): its parameters and forward FLOPs per sample (None where the FLOP
            counter cannot trace it), in member order; one entry for a recipe without an ensemble.
    """

    params: int
    params_total: int
    flops: int | None
    flops_total: int | None
    teacher_params: int = 0
    members: tuple[tuple[int, int | None], ...] = ()


def input_shape(cfg: RunConfig) -> tuple[int, int, int]:
    """(C, H, W) of the network's input (from its model arguments; 3 x 28 x 28 by default)."""
    args = cfg.model.args
    size = int(args.get("image_size", 28))
    return (int(args.get("in_channels", 3)), size, size)


def forward_passes(train: TrainConfig) -> int:
    """Forward passes of one network per prediction: 2 with ``train.tta=flip`` (the map and its mirror), else 1."""
    return 2 if train.tta == "flip" else 1


def candidate_mixes(cfg: RunConfig) -> list[float]:
    """The teacher's weight in the predictions (``train.distill_mix``) of each ``train.select`` candidate, or of
    the recipe itself when nothing is chosen in the fold.
    """
    return [c.train.distill_mix for c in candidate_configs(cfg)] if cfg.train.select else [cfg.train.distill_mix]


def _measure(model_cfg: ModelConfig, input_shape: tuple[int, ...], seen: dict[str, tuple[int, int | None]]
             ) -> tuple[int, int | None]:
    """Parameters and forward FLOPs per sample of one network (None: the FLOP counter cannot trace it), measured
    once per model and arguments in ``seen``.
    """
    key = repr((model_cfg.name, sorted(model_cfg.args.items())))
    if key not in seen:
        model = build_model(model_cfg)
        try:
            flops: int | None = count_flops(model, (1, *input_shape))
        except Exception:  # a model the FLOP counter cannot trace: the tables leave the figure out
            flops = None
        seen[key] = (count_parameters(model), flops)
    return seen[key]


def _one(cfg: RunConfig, input_shape: tuple[int, ...], mixed: bool, seen: dict[str, tuple[int, int | None]]
         ) -> PredictionCost:
    """The cost of one recipe without in-fold choice; ``mixed``: its teacher predicts too."""
    params, flops = _measure(cfg.model, input_shape, seen)
    nets = tuple(_measure(m.model, input_shape, seen) for m in member_configs(cfg))  # each member's own network
    params_total = sum(p for p, _ in nets) * cfg.train.snapshots
    member_flops = [f for _, f in nets]
    flops_total = None if flops is None or None in member_flops else (
        sum(f for f in member_flops if f is not None) * cfg.train.snapshots * forward_passes(cfg.train))
    teacher_params = 0
    if cfg.train.distill:
        t = teacher_config(cfg)
        t_params, t_flops = _measure(t.model, input_shape, seen)
        members = cfg.train.distill_members
        teacher_params = members * t_params
        if mixed:
            params_total += teacher_params
            flops_total = None if flops_total is None or t_flops is None else (
                flops_total + t_flops * members * forward_passes(t.train))
    if flops_total is not None and cfg.data.input_transform != "none":
        flops_total += count_function_flops(lambda x: transform_maps(cfg.data.input_transform, x),
                                            (1, *SAMPLE_SHAPE))
    return PredictionCost(params, params_total, flops, flops_total, teacher_params, nets)


def _candidate_costs(cfg: RunConfig, shape: tuple[int, ...], seen: dict[str, tuple[int, int | None]]
                     ) -> list[tuple[RunConfig, PredictionCost]]:
    """Each recipe a fold of ``cfg`` may predict with (its ``train.select`` candidates, or itself) and that
    recipe's cost; the teacher counts in every one when any of them mixes it into the predictions.
    """
    candidates = candidate_configs(cfg) if cfg.train.select else [cfg]
    mixed = max(c.train.distill_mix for c in candidates) > 0
    return [(c, _one(c, shape, mixed, seen)) for c in candidates]


def prediction_cost(cfg: RunConfig, input_shape: Sequence[int]) -> PredictionCost:
    """The cost of one prediction of recipe ``cfg`` on maps of ``input_shape`` (C, H, W; the network's input).

    With ``train.select`` each fold predicts with the candidate it chose, so the totals are the largest of any
    candidate's: the teacher counts whenever a candidate mixes it in (as the fold's ``params_total`` always did).
    The input transform is counted once, on the stored 3 x 28 x 28 map; softmax, normalisation and other
    elementwise work are not counted (:func:`~epir.profiling.count_flops`).
    """
    shape = tuple(int(s) for s in input_shape)
    seen: dict[str, tuple[int, int | None]] = {}
    costs = [c for _, c in _candidate_costs(cfg, shape, seen)]
    base = _one(cfg, shape, False, seen) if cfg.train.select else costs[0]  # the model's own figures
    totals = [c.flops_total for c in costs]
    return PredictionCost(
        params=base.params,
        params_total=max(c.params_total for c in costs),
        flops=base.flops,
        flops_total=None if any(t is None for t in totals) else max(t for t in totals if t is not None),
        teacher_params=base.teacher_params,
        members=base.members,
    )


def _networks(models: Sequence[ModelConfig]) -> nn.Module:
    """One untrained network of each of ``models`` as one module (:class:`~epir.models.ProbabilityMean`), or the
    one network.
    """
    nets = [build_model(model) for model in models]
    return nets[0] if len(nets) == 1 else ProbabilityMean(nets)


def prediction_module(cfg: RunConfig) -> nn.Module:
    """An untrained module that predicts as one fold of recipe ``cfg`` does, in eval mode, for timing the whole.

    It is the checkpoint's :class:`~epir.inference.InferenceModel` with random weights and an identity
    normalisation: it takes the stored maps (B, 3, H, W), applies the input transform, runs every ensemble member
    and snapshot, on the map and its mirror with ``train.tta=flip``, and blends in the teacher's members when the
    recipe mixes them into the predictions. With ``train.select`` it is the candidate whose prediction is dearest
    (:func:`prediction_cost`), the teacher included whenever any candidate mixes it in.
    """
    from epir.inference.checkpoint import InferenceModel  # noqa: PLC0415 (the inference package imports the engine)

    pairs = _candidate_costs(cfg, input_shape(cfg), {})
    mix = max(c.train.distill_mix for c, _ in pairs)
    dearest = max(pairs, key=lambda p: (p[1].flops_total or 0, p[0].train.ensemble * p[0].train.snapshots))[0]

    def identity(model: ModelConfig) -> InputNorm:  # (x - 0) / 1 over the network's input channels
        channels = int(model.args.get("in_channels", 3))
        return InputNorm(torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1))

    teacher = None
    if mix > 0:
        t = teacher_config(dearest)
        teacher = InferenceModel(_networks([t.model] * dearest.train.distill_members), identity(t.model),
                                 dearest.data.input_transform, t.train.tta)
    model = _networks([m.model for m in member_configs(dearest)  # every member's own network, each snapshot
                       for _ in range(dearest.train.snapshots)])
    return InferenceModel(model, identity(dearest.model), dearest.data.input_transform, dearest.train.tta,
                          teacher=teacher, mix=mix).eval()


def profile_recipe(cfg: RunConfig, input_shape: Sequence[int], *, repeats: int = 50) -> dict[str, Any]:
    """What one whole prediction of recipe ``cfg`` takes (``epir profile --recipe``): ``params_total`` and
    ``flops_total`` (:func:`prediction_cost`) and ``latency_total_ms_b1``, the CPU latency at batch 1 of
    :func:`prediction_module` (ms, the median of ``repeats`` calls, on the current torch threads).
    """
    cost = prediction_cost(cfg, input_shape)
    return {"params_total": cost.params_total, "flops_total": cost.flops_total,
            "latency_total_ms_b1": measure_latency(prediction_module(cfg), batch_size=1, repeats=repeats)}


__all__ = ["PredictionCost", "candidate_mixes", "forward_passes", "input_shape", "prediction_cost",
           "prediction_module", "profile_recipe"]

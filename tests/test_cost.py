"""The cost of one prediction of a recipe (epir.engine.cost): every network that predicts, each forward pass."""
from __future__ import annotations

from dataclasses import replace

import torch

from epir.config import DataConfig, ModelConfig, RunConfig
from epir.engine.cost import forward_passes, prediction_cost
from epir.engine.selection import teacher_config
from epir.engine.train import InputNorm
from epir.inference import InferenceModel
from epir.models import ProbabilityMean, build_model, default_recipe
from epir.profiling import count_flops

TINY_EPIR = ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]})


def _norm() -> InputNorm:
    return InputNorm(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))


def _cfg(**train: object) -> RunConfig:
    return RunConfig(model=TINY_EPIR, data=DataConfig(dataset="megc2019"),
                     train=replace(default_recipe("epir", "alone"), **train))  # type: ignore[arg-type]


def test_the_total_is_what_the_checkpoint_module_computes() -> None:
    """Two members flipped, three STSTNet teachers mixed in: the FLOPs the checkpoint's module runs."""
    cfg = _cfg(tta="flip", ensemble=2, distill="ststnet", distill_weight=0.0, distill_members=3, distill_mix=0.5)
    t_cfg = teacher_config(cfg)
    student = ProbabilityMean([build_model(cfg.model) for _ in range(2)])
    teacher = InferenceModel(ProbabilityMean([build_model(t_cfg.model) for _ in range(3)]), _norm(),
                             tta=t_cfg.train.tta)
    whole = InferenceModel(student, _norm(), tta="flip", teacher=teacher, mix=0.5)
    cost = prediction_cost(cfg, (3, 28, 28))
    assert cost.flops == count_flops(build_model(cfg.model))
    assert cost.flops_total == count_flops(whole) > 2 * 2 * cost.flops
    assert cost.params_total == sum(p.numel() for p in whole.parameters()) == 2 * cost.params + cost.teacher_params


def test_a_teacher_that_only_teaches_is_not_counted_in_the_whole() -> None:
    plain = prediction_cost(_cfg(), (3, 28, 28))
    taught = prediction_cost(_cfg(distill="ststnet", distill_weight=1.0), (3, 28, 28))
    assert taught.teacher_params == 1683 and plain.teacher_params == 0
    assert (taught.params_total, taught.flops_total) == (plain.params_total, plain.flops_total)
    assert plain.flops_total == forward_passes(_cfg().train) * plain.flops


def test_chosen_in_the_fold_the_dearest_candidate_counts() -> None:
    """With train.select each fold predicts with its choice: the totals are the largest candidate's."""
    cfg = _cfg(distill="ststnet", distill_weight=0.0,
               select=("train.distill_mix=0", "train.tta=flip;train.distill_mix=0.5"))
    cost = prediction_cost(cfg, (3, 28, 28))
    assert cost.flops_total == 2 * cost.flops + 780_000  # the flipped candidate with STSTNet mixed in
    assert cost.params_total == cost.params + 1683


def test_the_smooth_transform_adds_its_convolution_once() -> None:
    none = prediction_cost(_cfg(), (3, 28, 28))
    smooth = prediction_cost(replace(_cfg(), data=DataConfig(dataset="megc2019", input_transform="smooth")),
                             (3, 28, 28))
    assert smooth.flops_total - none.flops_total == 2 * 25 * 3 * 28 * 28  # a 5 x 5 kernel per output value
    assert smooth.flops == none.flops


def test_a_model_the_counter_cannot_trace_has_no_figure(monkeypatch) -> None:
    import epir.engine.cost as cost_mod

    def fail(*_a: object, **_k: object) -> int:
        raise RuntimeError("untraceable")

    monkeypatch.setattr(cost_mod, "count_flops", fail)
    cost = prediction_cost(_cfg(), (3, 28, 28))
    assert cost.flops is None and cost.flops_total is None and cost.params > 0


def test_the_whole_module_of_an_in_fold_choice_is_the_dearest_candidate() -> None:
    """prediction_module with train.select: the candidate prediction_cost counts (two members, flipped, the teacher
    mixed in), so that its latency is the whole's that the tables pair with flops_total."""
    from epir.engine.cost import prediction_module
    from epir.profiling import count_parameters

    cfg = _cfg(distill="ststnet", distill_weight=0.0, distill_members=2, ensemble=2,
               select=("train.distill_mix=0", "train.tta=flip;train.distill_mix=0.5"))
    whole, cost = prediction_module(cfg), prediction_cost(cfg, (3, 28, 28))
    assert count_flops(whole) == cost.flops_total == 2 * 2 * cost.flops + 2 * 780_000
    assert count_parameters(whole) == cost.params_total == 2 * cost.params + 2 * 1683

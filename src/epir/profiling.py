"""Model size and speed: parameters, forward FLOPs, CPU latency, for any registered model."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from epir.models import create_model

#: One flow map: channels u, v, strain at 28x28.
SAMPLE_SHAPE = (3, 28, 28)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_function_flops(fn: Callable[[torch.Tensor], object], input_shape: Sequence[int]) -> int:
    """Forward FLOPs per sample of ``fn`` on a random batch of ``input_shape``, counted as :func:`count_flops`
    counts them (matrix products and convolutions only), without gradients. For work in front of a network that is
    not a module, e.g. an input transform (:func:`epir.data.transforms.transform_maps`).
    """
    x = torch.randn(*input_shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fn(x)
    return counter.get_total_flops() // input_shape[0]


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, *SAMPLE_SHAPE)) -> int:
    """Forward FLOPs per sample, counted by ``torch.utils.flop_counter.FlopCounterMode`` in eval mode.

    FlopCounterMode counts a multiply-accumulate as 2 FLOPs (matmul, linear, conv, bmm: 2 * MACs) and counts
    only those matrix and convolution operators: softmax, normalisation, activations and other elementwise
    operations are not included. ``F.scaled_dot_product_attention`` is run on its math backend here, because
    FlopCounterMode does not count the fused CPU kernel. The total over a batch of ``input_shape[0]`` is
    divided by the batch size.
    """
    was_training = model.training
    model.eval()
    try:
        return count_function_flops(model, input_shape)
    finally:
        model.train(was_training)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Wall time of ``fn()`` in milliseconds: the median over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block on ``threads`` torch intra-op threads (0 or None: as they are), restoring the count after; yields
    the number of threads the block runs on. The count is set and restored only where it changes, so that wrapping
    every prediction in it (:mod:`epir.inference.runners`) costs nothing when it is already right.

    A batch-1 latency measured on one thread reads steadier when other processes hold the cores: threads that
    wait for a core slow a small forward pass many times over.
    """
    before = torch.get_num_threads()
    if threads and threads > 0 and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def measure_latency(
    model: nn.Module, batch_size: int = 1, repeats: int = 50, warmup: int = 5,
    sample_shape: Sequence[int] = SAMPLE_SHAPE,
) -> float:
    """Forward latency in milliseconds: the median over ``repeats`` timed calls after ``warmup`` untimed
    ones, in eval mode under ``torch.inference_mode``, on a random batch of ``batch_size`` samples.
    """
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *sample_shape)
    try:
        with torch.inference_mode():
            return median_ms(lambda: model(x), repeats, warmup)
    finally:
        model.train(was_training)


def measure_train_step(
    model: nn.Module, batch_size: int = 64, repeats: int = 20, warmup: int = 3,
    sample_shape: Sequence[int] = SAMPLE_SHAPE, num_classes: int = 3,
) -> float:
    """Forward + backward time in milliseconds (median over ``repeats`` after ``warmup``), in train mode,
    through ``forward_with_loss`` when the model has one, else cross-entropy on ``forward``. No optimizer
    step: add roughly the cost of one pass over the parameters for that.
    """
    was_training = model.training
    model.train()
    x = torch.randn(batch_size, *sample_shape)
    y = torch.arange(batch_size) % num_classes
    ce = nn.functional.cross_entropy
    times = []
    try:
        for i in range(warmup + repeats):
            start = time.perf_counter()
            with_loss = getattr(model, "forward_with_loss", None)
            if callable(with_loss):
                loss, _ = with_loss(x, y, ce)
            else:
                loss = ce(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return statistics.median(times)


def profile_model(name: str, **model_kwargs: Any) -> dict[str, Any]:
    """Build registered model ``name`` and measure it.

    Returns:
        ``model`` (the name), ``params``, ``flops_per_sample`` (see ``count_flops``), ``latency_ms_b1`` and
        ``latency_ms_b64`` (forward latency at batch 1 and 64, see ``measure_latency``).
    """
    model = create_model(name, **model_kwargs)
    return {
        "model": name,
        "params": count_parameters(model),
        "flops_per_sample": count_flops(model),
        "latency_ms_b1": measure_latency(model, batch_size=1, repeats=50),
        "latency_ms_b64": measure_latency(model, batch_size=64, repeats=20),
    }

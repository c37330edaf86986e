"""Where one training step of a model goes on the CPU, and whether stacking models pays at the step level.

    python benchmarks/train_step.py                      # EPIR, its recipe's batch, one thread, ~1 min
    python benchmarks/train_step.py --threads 2 --models epir ststnet
    python benchmarks/train_step.py --models epir "epir[refine=false]" "epir[refine_transform=affine]" --rounds 3

Table 1, per model: the median wall time of one training step on a batch of the recipe's size (64 for EPIR) split
into forward (the model's loss as ``fit`` computes it), backward, and gradient clipping plus the optimizer step,
and the forward plus backward of the tokenizer alone (EPIR's ``tokenize``: the speed channel if
``flow_magnitude``, the stem, and DNSPT: the input, its four refined shifted copies, the patch cut, LayerNorm,
projection, LayerNorm). Timings do not depend on the weights or the maps, so the maps are
random 0-255 maps, standardised. A model may be a variant, ``NAME[KEY=VALUE,...]`` (its arguments as ``--set
model.KEY=VALUE`` gives them); ``ratio`` is each step's time over the first model's, measured in the same run, and
``--rounds R`` measures every model R times in turn (interleaved) and keeps each part's median.

Table 2, per model: ``fit`` of K models one after another against ``epir.engine.batched.fit_many`` of the same K
at once (``--stack``, 4 by default, the CPU's old automatic fold batch) for ``--epochs`` epochs on ``--samples``
random maps, medians over ``--repeats``, interleaved; ratio = loop / stacked (above 1: stacking is faster). This
is the step-level version of ``benchmarks/loso_speed.py``'s loop-against-batched LOSO (docs/epir-design.md, "Round
10" and "Round 11").
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from epir.config import ModelConfig, parse_value
from epir.engine.batched import Member, fit_many
from epir.engine.train import fit, make_optimizer
from epir.errors import EpirError
from epir.models import build_model, default_recipe, resolve_model_args
from epir.profiling import median_ms


def model_config(spec: str) -> ModelConfig:
    """A registered model, ``epir``, or a variant of it, ``epir[refine=false,shifts=axial]``: its configuration."""
    name, bracket, rest = spec.partition("[")
    args = {}
    if bracket:
        items = rest.removesuffix("]").split(",") if rest.endswith("]") else []
        pairs = [item.partition("=") for item in items]
        if not pairs or not all(key.strip() and eq for key, eq, _ in pairs):
            raise SystemExit(f"--models {spec!r}: expected NAME or NAME[KEY=VALUE,...], e.g. epir[refine=false].")
        args = {key.strip(): parse_value(value) for key, _, value in pairs}
    try:
        return ModelConfig(name=name, args=resolve_model_args(name, args))
    except EpirError as e:  # an unknown model or argument, a bad value: one line
        raise SystemExit(f"--models {spec!r}: {e}") from None


def step_parts(model_cfg: ModelConfig, repeats: int) -> dict[str, float]:
    cfg = default_recipe(model_cfg.name)
    batch = cfg.batch_size
    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    x = torch.randn(batch, 3, 28, 28)
    y = torch.arange(batch) % 3
    opt = make_optimizer(model, cfg)
    with_loss = getattr(model, "forward_with_loss", None)

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)

    def forward() -> torch.Tensor:
        if with_loss is not None:
            return with_loss(x, y, ce)[0]
        return ce(model(x), y)

    def backward() -> None:
        opt.zero_grad(set_to_none=True)
        forward().backward()

    def update() -> None:
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    backward()
    parts = {"forward": median_ms(forward, repeats)}
    parts["backward"] = median_ms(backward, repeats) - parts["forward"]
    parts["clip + optimizer"] = median_ms(update, repeats)
    tokenize = getattr(model, "tokenize", None)  # EPIR: the input's channels, stem and tokenizer, as its forward
    if tokenize is not None:
        def tok() -> None:
            tokenize(x).sum().backward()
        parts["tokenizer fwd+bwd"] = median_ms(tok, repeats)
    return parts


def loop_vs_stacked(model_cfg: ModelConfig, stack: int, epochs: int, samples: int, repeats: int) -> tuple[float, float]:
    cfg = replace(default_recipe(model_cfg.name), epochs=epochs, distill="", select=(), select_shared=0)
    g = torch.Generator().manual_seed(0)
    members = [Member(x=torch.rand(samples, 3, 28, 28, generator=g) * 255, y=torch.arange(samples) % 3, seed=s,
                      name=f"model {s}") for s in range(stack)]

    def loop() -> None:
        for m in members:
            fit(build_model(model_cfg), m.x, m.y, cfg, seed=m.seed, num_classes=3)

    def stacked() -> None:
        fit_many(model_cfg, members, cfg, num_classes=3)

    loops, stacks = [], []
    for _ in range(repeats):
        for fn, out in ((loop, loops), (stacked, stacks)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(loops), statistics.median(stacks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["epir"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30, help="steps timed per part (medians)")
    p.add_argument("--stack", type=int, default=4, help="models trained at once in table 2")
    p.add_argument("--epochs", type=int, default=5, help="epochs per model in table 2")
    p.add_argument("--samples", type=int, default=384, help="training maps per model in table 2")
    p.add_argument("--fit-repeats", type=int, default=3, help="interleaved repeats in table 2 (medians)")
    p.add_argument("--rounds", type=int, default=1, help="table 1 measured this many times in turn (medians)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    configs = [model_config(spec) for spec in args.models]  # a bad variant stops before anything is timed
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.rounds} round(s)\n")
    print("| model | batch | forward ms | backward ms | clip + optimizer ms | step ms | ratio | tokenizer fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|---|")
    rounds: dict[str, list[dict[str, float]]] = {spec: [] for spec in args.models}
    for _ in range(args.rounds):
        for spec, model_cfg in zip(args.models, configs):
            rounds[spec].append(step_parts(model_cfg, args.repeats))
    first = None
    for spec, model_cfg in zip(args.models, configs):
        parts = {key: statistics.median(r[key] for r in rounds[spec]) for key in rounds[spec][0]}
        step = parts["forward"] + parts["backward"] + parts["clip + optimizer"]
        first = step if first is None else first
        tok = parts.get("tokenizer fwd+bwd")
        tok_text = f"{tok:.2f} ({100 * tok / step:.0f}% of the step)" if tok is not None else "-"
        print(f"| {spec} | {default_recipe(model_cfg.name).batch_size} | {parts['forward']:.2f} | "
              f"{parts['backward']:.2f} | {parts['clip + optimizer']:.2f} | {step:.2f} | {step / first:.2f} | "
              f"{tok_text} |")
    print(f"\n| model | {args.stack} models, {args.epochs} epochs, {args.samples} maps each | loop s | stacked s | "
          f"ratio (loop / stacked) |")
    print("|---|---|---|---|---|")
    for spec, model_cfg in zip(args.models, configs):
        loop_s, stack_s = loop_vs_stacked(model_cfg, args.stack, args.epochs, args.samples, args.fit_repeats)
        print(f"| {spec} | fit x {args.stack} against fit_many | {loop_s:.2f} | {stack_s:.2f} | "
              f"{loop_s / stack_s:.2f}x |")


if __name__ == "__main__":
    main()

"""Batched training: many independent models of one architecture trained as one vectorised model.

The folds of a LOSO (and likewise seeds, or the members of an in-fold ensemble) train models that share an
architecture and a recipe but nothing else. :func:`fit_many` stacks their parameters on a leading *member*
axis (``torch.func.stack_module_state``) and runs one vectorised training step for all of them with
``torch.func.vmap`` over ``functional_call``: one Python-level step and one kernel launch per operation for
M models instead of M. Everything else stays per member, exactly as :func:`epir.engine.train.fit` does it:

- its own training samples only (a member never receives another member's samples, let alone a held-out
  subject's), its own input normalisation fitted on them, its own class weights;
- its own shuffling and augmentation stream (``torch.Generator`` seeded with the member's seed) and its own
  initialisation (``torch.manual_seed(seed)`` before the model is built), so the same seeds give the same
  batches and initial weights as the one-at-a-time loop;
- per-sample data-dependent steps (token merging, token selection) stay per sample: vmap keeps them;
- per-member gradient clipping; Adam/AdamW/SGD are elementwise, so one optimizer over the stacked parameters
  is M independent optimizers.

Members whose training sets differ in size get batches of different sizes at the end of an epoch; those are
zero-padded to one size and a ``valid`` mask takes the padding out of the loss (``masked_cross_entropy``, the
contrastive term) and out of batch statistics (:class:`epir.models.layers.BatchNorm2d` under
``sample_mask``). Members are grouped so that they take the same number of optimizer steps per epoch (the
learning-rate schedule is per step), see :func:`steps_per_epoch`.

- its own dropout and stochastic-depth masks: the draws one training step makes are recorded once
  (:func:`epir.models.layers.recorded_draws`), then drawn for each member from a generator in the state the global
  generator has after that member's model is built, in the loop's order and with its batch sizes
  (:func:`epir.models.layers.draw`), and replayed inside ``vmap`` (:func:`epir.models.layers.replayed_draws`).
  On CPU these are the loop's masks, so the weights agree with the loop's within float tolerance, dropout on or
  off (tests assert it), and a member's model never depends on which members share its batch (a ``--folds`` run,
  a resumed run and a full run train the same fold alike). On CUDA the masks are drawn on the device from a
  generator seeded with the member's seed (the loop's CUDA dropout draws differently, so there the paths differ
  the way two seeds do), and still depend on the member alone.

``vmap`` runs with ``randomness="error"``: a model that draws randomness any other way (``torch.nn.Dropout``,
``torch.rand`` in ``forward``) is refused with a one-line error instead of being given masks that depend on its
batch partners; it trains one at a time (register it without ``batchable``) or draws through
``epir.models.layers``.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from epir.config import ModelConfig, TrainConfig
from epir.data.augment import mix_batch
from epir.engine.train import (
    InputNorm,
    Teacher,
    WeightAverage,
    augment,
    check_distill_token,
    check_finite_weights,
    check_training_loss,
    class_weights,
    epoch_order,
    load_initial_weights,
    lr_factor,
    make_optimizer,
    masked_cross_entropy,
    steps_per_epoch,
    teacher_logits,
    teacher_loss,
)
from epir.errors import ConfigError
from epir.models import build_model
from epir.models.layers import Dropout, RandomCall, draw, recorded_draws, replayed_draws, sample_mask


@dataclass(frozen=True)
class Member:
    """One model to train: its training samples, its seed, and a name for messages (e.g. the fold)."""

    x: torch.Tensor  # (N, C, H, W), 0-255
    y: torch.Tensor  # (N,)
    seed: int
    name: str = "member"


def can_batch(model: nn.Module) -> tuple[bool, str]:
    """Whether ``model`` can train batched, and if not, why (the reason is shown to the user)."""
    if not getattr(model, "batchable", True):
        return False, f"{type(model).__name__} declares batchable = False"
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and not isinstance(module, Dropout) and module.p > 0:
            return False, (f"{type(model).__name__}.{name} is a torch {type(module).__name__}, whose masks batched "
                           "training cannot draw per model (use epir.models.layers.Dropout)")
    with_loss = getattr(model, "forward_with_loss", None)
    if with_loss is not None and "valid" not in inspect.signature(with_loss).parameters:
        return False, f"{type(model).__name__}.forward_with_loss takes no valid mask (needed for padded batches)"
    return True, ""


class _MemberLoss(nn.Module):
    """One member's training loss as a module, so ``functional_call`` can swap in each member's weights."""

    def __init__(
        self, model: nn.Module, label_smoothing: float, mixup: bool, distill: TrainConfig | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.mixup = mixup
        self.distill = distill
        self.with_loss = hasattr(model, "forward_with_loss")
        self.token = getattr(model, "distill_token", None) is not None  # DeiT: the teacher's term on its own head

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor, y2: torch.Tensor,
        lam: torch.Tensor, soft: torch.Tensor, draws: tuple[torch.Tensor, ...] = (),
    ) -> torch.Tensor:
        """x: (B, C, H, W) normalised; y, valid: (B,); weight: class weights (K,); y2, lam: mixup's second
        labels (B,) and weight () (``lam`` = 1 without mixup); soft: the teacher's logits (B, K) when
        distilling; draws: the step's dropout and stochastic-depth masks, in the order the model takes them.
        Returns (loss, number of correct valid predictions).
        """

        def taught(logits: torch.Tensor) -> torch.Tensor:
            assert self.distill is not None
            return self.distill.distill_weight * teacher_loss(logits, soft, self.distill, valid)

        def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            loss = masked_cross_entropy(logits, target, weight, self.label_smoothing, valid)
            if self.mixup:
                loss = lam * loss + (1.0 - lam) * masked_cross_entropy(
                    logits, y2, weight, self.label_smoothing, valid)
            if self.distill is not None:  # with a distillation token the teacher's term goes on its head instead
                loss = (1.0 - self.distill.distill_weight) * loss + (0.0 if self.token else taught(logits))
            return loss

        extra = {"distill": taught} if self.token and self.distill is not None else {}
        with sample_mask(valid), replayed_draws(draws):
            if self.with_loss:
                loss, logits = getattr(self.model, "forward_with_loss")(x, y, ce, valid=valid, **extra)  # noqa: B009
            else:
                logits = self.model(x)
                loss = ce(logits, y)
        correct = ((logits.argmax(-1) == y) & valid).sum().to(loss.dtype)
        return torch.stack([loss, correct.detach()])  # the loss, and the training accuracy's numerator


BatchedEpochCallback = Callable[[int, list[nn.Module], list[InputNorm]], None]


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    if len(t) == size:
        return t
    return torch.cat([t, t.new_zeros((size - len(t),) + tuple(t.shape[1:]))])


def fit_many(
    model_cfg: ModelConfig,
    members: Sequence[Member],
    cfg: TrainConfig,
    *,
    num_classes: int,
    device: str = "cpu",
    on_epoch: BatchedEpochCallback | None = None,
    teachers: Sequence[Teacher] | None = None,
    histories: Sequence[list[dict[str, float]]] | None = None,
) -> tuple[list[nn.Module], list[InputNorm]]:
    """Train one model per member at once (vectorised); return the trained models and their input norms.

    Each member's model and result are what :func:`epir.engine.train.fit` gives for
    ``torch.manual_seed(member.seed); model = build_model(model_cfg); fit(model, member.x, member.y, cfg,
    seed=member.seed)`` (within float tolerance, with dropout and stochastic depth off; see the module docstring).

    Args:
        model_cfg: the architecture (one for all members).
        members: the models to train; all must take the same number of steps per epoch.
        cfg: the recipe (one for all members).
        num_classes: number of classes (for class weights).
        device: torch device.
        on_epoch: called as ``on_epoch(epoch, models, norms)`` after every epoch with the members' current
            models (the caller's optimistic oracle-epoch bookkeeping; nothing here sees test data).
        teachers: one trained teacher per member (same rows) to distil from, or None.
        histories: one list per member to append its training curve to (as :func:`~epir.engine.train.fit`).

    Raises:
        ConfigError: no members, or members with different numbers of steps per epoch.
        DivergedError: a member's loss became NaN or infinite, or its last epoch's mean loss exploded past
            :func:`~epir.engine.train.exploded_loss_limit` (the message names the member).
    """
    if not members:
        raise ConfigError("fit_many() got no members.")
    if any(len(m.x) == 0 for m in members):
        raise ConfigError(f"fit_many(): member {next(m.name for m in members if len(m.x) == 0)!r} has no samples.")
    steps = {steps_per_epoch(len(m.x), cfg.batch_size) for m in members}
    if len(steps) > 1:
        raise ConfigError(
            f"fit_many(): members take {sorted(steps)} steps per epoch; group members with equal "
            f"ceil(n / train.batch_size) (epir.engine.batched.steps_per_epoch)."
        )
    n_steps = steps.pop()
    models, rngs = [], []
    for m in members:
        torch.manual_seed(m.seed)  # the same initialisation as the loop's fold
        model = build_model(model_cfg)
        if cfg.init:  # pretrained weights (epir pretrain), as fit() loads them
            load_initial_weights(model, cfg.init)
        models.append(model.to(device))
        rngs.append(_mask_generator(m.seed, device))
    ok, why = can_batch(models[0])
    if not ok:
        raise ConfigError(f"fit_many(): {why}.")
    norms = [InputNorm.fit(cfg.input_norm, m.x) for m in members]
    calls = _random_calls(models[0], members[0], norms[0], device)
    gens = [torch.Generator().manual_seed(m.seed) for m in members]
    weights = []
    for m in members:
        w = class_weights(m.y, num_classes, cfg)
        weights.append(torch.ones(num_classes) if w is None else w)
    weight = torch.stack(weights).to(device)

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    if cfg.distill_weight == 0:  # nothing to learn from the teachers' soft targets: skip their forward passes
        teachers = None
    check_distill_token(base, teachers is not None, "the batched members")
    loss_module = _MemberLoss(base, cfg.label_smoothing, cfg.mixup > 0 or cfg.cutmix > 0,
                              cfg if teachers is not None else None)
    prefixed_params = {f"model.{k}": v for k, v in params.items()}
    prefixed_buffers = {f"model.{k}": v for k, v in buffers.items()}

    def member_loss(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
        valid: torch.Tensor, w: torch.Tensor, y2: torch.Tensor, lam: torch.Tensor, soft: torch.Tensor,
        draws: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        return functional_call(loss_module, (p, b), (x, y, valid, w, y2, lam, soft, draws))

    batched_loss = vmap(member_loss, randomness="error")  # every draw is replayed (module docstring)
    trainable = [p for p in params.values() if p.requires_grad]
    opt = make_optimizer(trainable, cfg)
    averager = WeightAverage(trainable, cfg)
    total = cfg.epochs * n_steps
    warmup = cfg.warmup_epochs * n_steps
    sizes = [len(m.x) for m in members]
    step = 0
    for epoch in range(cfg.epochs):
        loss_module.train()
        loss_sums = torch.zeros(len(members), device=device)
        correct = torch.zeros(len(members), device=device)
        seen = torch.zeros(len(members), device=device)
        orders = [epoch_order(m.y, cfg, g) for m, g in zip(members, gens)]
        for s in range(n_steps):
            xs, ys, y2s, lams, valids, softs, masks = [], [], [], [], [], [], []
            lo = s * cfg.batch_size
            width = max(min(cfg.batch_size, n - lo) for n in sizes)
            for i, (m, order, norm, g) in enumerate(zip(members, orders, norms, gens)):
                idx = order[lo : lo + cfg.batch_size]
                xm, ym = augment(m.x[idx], cfg, g), m.y[idx]
                y2m, lam = ym, 1.0
                if cfg.mixup > 0 or cfg.cutmix > 0:  # before padding: a member mixes its own real samples only
                    xm, ym, y2m, lam = mix_batch(xm, ym, cfg.mixup, cfg.cutmix, g)
                if teachers is not None:
                    softs.append(_pad(teacher_logits(teachers[i], xm.to(device)).cpu(), width))
                xm = norm(xm)
                xs.append(_pad(xm, width))
                ys.append(_pad(ym, width))
                y2s.append(_pad(y2m, width))
                lams.append(lam)
                valids.append(torch.arange(width) < len(idx))
                masks.append([_pad(draw(c, len(idx), rngs[i]), width) for c in calls])  # as the loop draws them
            xb = torch.stack(xs).to(device)
            yb = torch.stack(ys).to(device)
            y2b = torch.stack(y2s).to(device)
            lamb = torch.tensor(lams, dtype=xb.dtype, device=device)
            vb = torch.stack(valids).to(device)
            sb = torch.stack(softs).to(device) if teachers is not None else torch.zeros(len(members), 1, device=device)
            draws = tuple(torch.stack(per_call).to(device) for per_call in zip(*masks))  # one (M, width, ...) per call
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, warmup, cfg.schedule)
            try:
                out = batched_loss(prefixed_params, prefixed_buffers, xb, yb, vb, weight, y2b, lamb, sb, draws)
            except RuntimeError as e:
                if "randomness" not in str(e):
                    raise
                raise ConfigError(
                    f"fit_many(): {type(models[0]).__name__} draws random numbers in training other than through "
                    "epir.models.layers (Dropout, DropPath), so batched models cannot each draw their own; use "
                    "those layers, or register the model without batchable=True to train it one at a time."
                ) from e
            losses = out[:, 0]
            counts = vb.sum(1)
            loss_sums += losses.detach() * counts
            correct += out[:, 1].detach()
            seen += counts
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # members are independent: d(sum)/d(member's weights) = d(its loss)/d(...)
            if cfg.grad_clip > 0:
                _clip_per_member([p for p in params.values() if p.grad is not None], cfg.grad_clip)
            opt.step()
            averager.after_step(step)
            step += 1
        # a NaN or inf at any step carries into the sum: one check (and one sync) per epoch, naming the member
        check_training_loss(loss_sums / seen, num_classes, [m.name for m in members], epoch, cfg.lr,
                            last=epoch == cfg.epochs - 1)
        averager.after_epoch(epoch)
        if histories is not None:
            for h, lo, c in zip(histories, (loss_sums / seen).tolist(), (correct / seen).tolist()):
                h.append({"epoch": epoch, "loss": lo, "acc": c})
        if on_epoch is not None:
            on_epoch(epoch, _unstack(models, params, buffers), norms)
    averager.apply()
    models = _unstack(models, params, buffers)
    for m, model in zip(members, models):
        check_finite_weights(model.parameters(), m.name)
    return models, norms


def alone_trains_batched(device: str) -> bool:
    """Whether a model trained alone goes through :func:`fit_many` rather than the loop
    (:func:`~epir.engine.train.fit`) on ``device``: off the CPU, where the loop's dropout draws from another stream
    than a member's masks (:func:`_mask_generator`), so a fold alone (a ``--folds`` or resumed run) would train
    unlike the same fold beside partners. On the CPU the two give the same model and the loop is faster.
    """
    return torch.device(device).type != "cpu"


def _mask_generator(seed: int, device: str) -> torch.Generator:
    """The generator a member's dropout masks come from, called right after its model is built. On CPU: the global
    generator's state at that point, where :func:`~epir.engine.train.fit` starts drawing its masks, so the masks are
    the loop's. Elsewhere: a generator on the device seeded with the member's seed (the loop's CUDA dropout draws
    differently anyway; masks drawn on the device spare a host-to-device copy of every mask at every step).
    """
    if torch.device(device).type == "cpu":
        rng = torch.Generator()
        rng.set_state(torch.get_rng_state())
        return rng
    return torch.Generator(device=device).manual_seed(seed)


def _random_calls(model: nn.Module, member: Member, norm: InputNorm, device: str) -> list[RandomCall]:
    """The random draws one training step of ``model`` makes, in order (recorded on a copy and two samples)."""
    probe = copy.deepcopy(model).train()  # a copy: the recording pass must not move batch-norm statistics
    rows = torch.arange(2) % len(member.x)
    x, y = norm(member.x[rows]).to(device), member.y[rows].to(device)
    with torch.no_grad(), recorded_draws() as calls:
        with_loss = getattr(probe, "forward_with_loss", None)
        if with_loss is not None:
            with_loss(x, y, lambda logits, _t: logits.sum(), valid=torch.ones(2, dtype=torch.bool, device=device))
        else:
            probe(x)
    return calls


def _clip_per_member(params: list[torch.Tensor], max_norm: float) -> None:
    """``nn.utils.clip_grad_norm_`` for each member separately (the member axis is dim 0 of every tensor)."""
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        norms = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in grads]).norm(dim=0)  # (M,)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view((-1,) + (1,) * (g.ndim - 1)))


def _unstack(
    models: list[nn.Module], params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
) -> list[nn.Module]:
    """Copy each member's slice of the stacked weights back into its own module."""
    with torch.no_grad():
        for i, model in enumerate(models):
            state = {k: v[i] for k, v in params.items()} | {k: v[i] for k, v in buffers.items()}
            model.load_state_dict(state)
    return models


__all__ = ["Member", "can_batch", "fit_many", "steps_per_epoch"]

"""Training one model on one fold's training subjects, and predicting with it.

``fit`` receives only the training samples: nothing of the held-out subject reaches it, so neither model
selection nor normalisation statistics can see that subject. Everything is held in memory as tensors.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
from torch import nn

from epir.config import INPUT_NORMS, TTA_KINDS, TrainConfig
from epir.data.augment import MAP_MAX, mirror_maps, mix_batch, random_rotate_scale, recentre_maps
from epir.errors import ConfigError, DivergedError


@dataclass
class InputNorm:
    """Per-channel affine input normalisation ``(x - mean) / std``; stats from training samples only.

    With ``recentre`` (``train.input_norm=recentre``) each map is first recentred on its own zero-motion
    level (:func:`recentre_maps`), and the statistics are those of the recentred training maps.
    """

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor  # (1, C, 1, 1)
    recentre: bool = False

    @classmethod
    def fit(cls, kind: str, x: torch.Tensor) -> InputNorm:
        """``kind``: none | scale (x / 255) | standardize (per-channel mean/std of ``x``) | recentre (each map's
        u and v minus their own median, then standardize on the recentred ``x``).
        """
        c = x.shape[1]
        if kind == "none":
            return cls(torch.zeros(1, c, 1, 1), torch.ones(1, c, 1, 1))
        if kind == "scale":
            return cls(torch.zeros(1, c, 1, 1), torch.full((1, c, 1, 1), MAP_MAX))
        if kind in ("standardize", "recentre"):
            if kind == "recentre":
                x = recentre_maps(x)
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            return cls(mean, std, recentre=kind == "recentre")
        raise ConfigError(f"train.input_norm={kind!r}; expected one of {', '.join(INPUT_NORMS)}.")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` with the fitted statistics."""
        if self.recentre:
            x = recentre_maps(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def to_dict(self) -> dict[str, list[float]]:
        """The statistics as JSON-ready lists."""
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random flow-map augmentation on a batch ``x`` (B, 3, H, W) at the 0-255 scale.

    A horizontal flip mirrors the face (:func:`epir.data.augment.mirror_maps`). Shifts pad by replicating the
    border.
    """
    b = x.shape[0]
    if cfg.hflip > 0:
        flip = torch.rand(b, generator=gen) < cfg.hflip
        if flip.any():
            x = x.clone()
            x[flip] = mirror_maps(x[flip])
    if cfg.translate > 0:
        t = cfg.translate
        h, w = x.shape[-2:]
        padded = F.pad(x, (t, t, t, t), mode="replicate")
        dy = torch.randint(0, 2 * t + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * t + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if cfg.rotate > 0 or cfg.scale > 0:
        x = random_rotate_scale(x, cfg.rotate, cfg.scale, gen)
    if cfg.noise > 0:
        x = x + cfg.noise * torch.randn(x.shape, generator=gen)
    return x


class WeightAverage:
    """The recipe's weight averaging (``train.average``) over a list of parameter tensors, which may carry a
    leading member axis (batched training): everything is elementwise.

    ``ema``: after every optimizer step ``avg = d * avg + (1 - d) * w`` with ``d = min(ema_decay, (1 + t) /
    (10 + t))`` (the usual warm-up of the decay). ``swa``: the plain mean of the weights at the end of every
    epoch from ``swa_start * epochs`` on (Izmailov et al. 2018). Buffers (BatchNorm statistics) are not
    averaged: they stay those of the last step.
    """

    def __init__(self, params: list[torch.Tensor], cfg: TrainConfig) -> None:
        if cfg.average not in ("none", "ema", "swa"):
            raise ConfigError(f"train.average={cfg.average!r}; expected none, ema or swa.")
        self.cfg = cfg
        self.params = params
        self.avg: list[torch.Tensor] | None = None
        self.count = 0
        self.swa_from = min(cfg.epochs - 1, int(cfg.swa_start * cfg.epochs))

    def after_step(self, step: int) -> None:
        """Update the average after optimizer step ``step``."""
        if self.cfg.average != "ema":
            return
        with torch.no_grad():
            if self.avg is None:
                self.avg = [p.detach().clone() for p in self.params]
                return
            d = min(self.cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 - d)

    def after_epoch(self, epoch: int) -> None:
        """Update the average at the end of epoch ``epoch``."""
        if self.cfg.average != "swa" or epoch < self.swa_from:
            return
        with torch.no_grad():
            self.count += 1
            if self.avg is None:
                self.avg = [p.detach().clone() for p in self.params]
            else:
                torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 / self.count)

    def apply(self) -> None:
        """Write the averaged weights into the parameters (no-op without averaging)."""
        if self.avg is None:
            return
        with torch.no_grad():
            for p, a in zip(self.params, self.avg):
                p.copy_(a)


def make_optimizer(model: nn.Module | Iterable[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s trainable parameters (or over the given tensors)."""
    source = model.parameters() if isinstance(model, nn.Module) else model
    params = [p for p in source if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"train.optimizer={cfg.optimizer!r}; expected adam, adamw or sgd.")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ConfigError(f"train.schedule={schedule!r}; expected constant or cosine.")


EpochCallback = Callable[[int, nn.Module, InputNorm], None]


def epoch_order(y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The order in which one epoch visits the training rows (labels ``y``).

    A seeded permutation (``train.shuffle``), else a fixed order (``train.order``): the rows as given, or sorted
    by label, stably (``by-class``: the official STSTNet code lists its class folders 0, 1, 2 and does not shuffle,
    so with batch 256 its first batch is nearly all class 0).
    """
    n = len(y)
    if cfg.shuffle:
        return torch.randperm(n, generator=gen)
    if cfg.order == "by-class":
        return torch.sort(y, stable=True).indices
    return torch.arange(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``n`` samples (the last batch may be partial)."""
    return math.ceil(n / batch_size)


def class_weights(y: torch.Tensor, num_classes: int, cfg: TrainConfig) -> torch.Tensor | None:
    """Per-class loss weights of the recipe, or None (``none``).

    ``balanced``: ``(n / (K n_c)) ** train.class_weight_power`` for the ``n_c`` rows of class c among the ``n`` of
    ``y`` and K classes: inverse class frequency at power 1, its square root at 0.5.
    """
    if cfg.class_weight == "balanced":
        counts = torch.bincount(y, minlength=num_classes).float().clamp_min(1)
        weights = len(y) / (num_classes * counts)
        return weights if cfg.class_weight_power == 1 else weights.pow(cfg.class_weight_power)
    if cfg.class_weight != "none":
        raise ConfigError(f"train.class_weight={cfg.class_weight!r}; expected none or balanced.")
    return None


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    label_smoothing: float,
    valid: torch.Tensor,
) -> torch.Tensor:
    """``F.cross_entropy(logits, target, weight=weight, label_smoothing=...)`` (mean reduction) over the samples
    where ``valid`` is true, written with no data-dependent shape so it runs under ``vmap``.

    As PyTorch defines it: ``(1 - e) * sum_i w[y_i] nll_i / sum_i w[y_i] + e / C * sum_i sum_c w_c (-log p_ic)
    / sum_i w[y_i]`` (with ``weight`` all ones for no class weighting).
    """
    logp = logits.log_softmax(dim=-1)
    v = valid.to(logp.dtype)
    wy = weight[target] * v
    nll = -logp.gather(-1, target[:, None])[:, 0]
    denom = wy.sum()
    loss = (1.0 - label_smoothing) * (wy * nll).sum() / denom
    if label_smoothing > 0:
        smooth = -(logp * weight).sum(dim=-1)
        loss = loss + label_smoothing / logits.shape[-1] * (smooth * v).sum() / denom
    return loss


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft-target knowledge distillation (Hinton et al. 2015): ``T^2 * KL(softmax(t / T) || softmax(s / T))``,
    averaged over the (valid) samples. The ``T^2`` keeps its gradients on the scale of the cross-entropy's.
    """
    t = teacher_logits / temperature
    kl = (t.softmax(-1) * (t.log_softmax(-1) - (logits / temperature).log_softmax(-1))).sum(-1)
    if valid is None:
        return kl.mean() * temperature**2
    v = valid.to(kl.dtype)
    return (kl * v).sum() / v.sum().clamp_min(1.0) * temperature**2


def hard_distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Hard-label distillation (DeiT, Touvron et al. 2021, eq. 3): the cross-entropy of ``logits`` with the teacher's
    predicted class, averaged over the (valid) samples; no class weights or label smoothing (the teacher's decision
    as it is).
    """
    ce = F.cross_entropy(logits, teacher_logits.argmax(-1), reduction="none")
    if valid is None:
        return ce.mean()
    v = valid.to(ce.dtype)
    return (ce * v).sum() / v.sum().clamp_min(1.0)


def teacher_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, cfg: TrainConfig, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """What the student learns from its teacher's ``teacher_logits``: :func:`distillation_loss` at
    ``train.distill_temperature`` (``train.distill_target=soft``) or :func:`hard_distillation_loss` (``hard``).
    """
    if cfg.distill_target == "hard":
        return hard_distillation_loss(logits, teacher_logits, valid)
    return distillation_loss(logits, teacher_logits, cfg.distill_temperature, valid)


def untaught_token_error(where: str, missing: str) -> ConfigError:
    """The one-line refusal of a distillation token without a teacher: ``model.distill_token=true<where>: ...
    <missing>; <the fix>``, raised by :func:`check_distill_token` and, before a run trains, by
    :func:`epir.engine.loso.check_distill_token_recipe`.
    """
    return ConfigError(
        f"model.distill_token=true{where}: the distillation token learns from a teacher's predictions, {missing}; set "
        "train.distill=MODEL (e.g. ststnet) with train.distill_weight > 0 and train.distill_shared=false, or "
        "model.distill_token=false."
    )


def check_distill_token(model: nn.Module, teaching: bool, describe: str = "") -> None:
    """A model with a distillation token (``model.distill_token``) learns it from a teacher only: refuse training it
    without one (``teaching``: a teacher's targets reach the training loss, ``train.distill`` with
    ``train.distill_weight > 0``).
    """
    if getattr(model, "distill_token", None) is not None and not teaching:
        raise untaught_token_error(f" ({describe})" if describe else "", "and this training has none")


Teacher = tuple[nn.Module, InputNorm]


@torch.no_grad()
def teacher_logits(teacher: Teacher, x: torch.Tensor) -> torch.Tensor:
    """A trained teacher's logits on raw (augmented, 0-255) maps ``x``, in eval mode with its own normalisation."""
    model, norm = teacher
    model.eval()
    return model(norm(x))


def check_finite_weights(params: Iterable[torch.Tensor], what: str) -> None:
    """Stop loudly when trained weights hold NaN or infinity (a diverged model is never used)."""
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise DivergedError(
            f"{what}: the trained weights are not finite: the model diverged. Lower train.lr (--lr) or set "
            f"train.grad_clip."
        )


#: A model whose last epoch's mean training loss exceeds this many times ln(num_classes), the loss of a uniform
#: guess, has diverged even where the loss is still finite: a sane recipe starts near ln(C) and falls, while a far
#: too high learning rate ends at 1e2-1e19 with saturated logits (STSTNet at lr 10 ends near 500, at lr 1e9 near
#: 1e19). Only the last epoch counts: a spike that training recovers from (STSTNet at lr 1: 432, then 8) is not one.
EXPLODED_LOSS_FACTOR = 100.0


def exploded_loss_limit(num_classes: int) -> float:
    """The last epoch's mean training loss above which a model counts as diverged: :data:`EXPLODED_LOSS_FACTOR` x
    ln(C) (ln 2 at least).
    """
    return EXPLODED_LOSS_FACTOR * math.log(max(num_classes, 2))


def check_training_loss(mean_loss: torch.Tensor, num_classes: int, names: Sequence[str], epoch: int, lr: float, *,
                        last: bool) -> None:
    """Stop training loudly when an epoch's mean training loss is not finite, or when the ``last`` epoch's has
    exploded past :func:`exploded_loss_limit` (one value per model in ``names``; a diverged model is never reported as
    a result).
    """
    losses = mean_loss.detach().reshape(-1).tolist()
    bad = [(n, v) for n, v in zip(names, losses) if not math.isfinite(v)]
    if bad:
        raise DivergedError(
            f"{', '.join(n for n, _ in bad)} epoch {epoch + 1}: the training loss is not finite "
            f"({[v for _, v in bad][:4]}): the model diverged. Lower train.lr (--lr, now {lr:g}), set "
            f"train.grad_clip, or check the input maps."
        )
    limit = exploded_loss_limit(num_classes)
    bad = [(n, v) for n, v in zip(names, losses) if v > limit] if last else []
    if bad:
        c = max(num_classes, 2)
        raise DivergedError(
            f"{', '.join(n for n, _ in bad)} epoch {epoch + 1} (the last): the mean training loss is {bad[0][1]:.3g}, "
            f"over {limit:.3g} ({EXPLODED_LOSS_FACTOR:g} x ln {c}, a uniform guess scoring {math.log(c):.3g}): the "
            f"model diverged. Lower train.lr (--lr, now {lr:g}) or set train.grad_clip."
        )


def load_initial_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load ``train.init``: a ``.safetensors`` state dict (``epir pretrain``) that must match ``model`` exactly."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"train.init={str(path)!r}: no such file; write one with `epir pretrain --out FILE`, or "
                          "leave train.init empty to start from random weights.")
    try:
        state = load_safetensors(str(file))
    except Exception as e:  # safetensors raises its own error types for a damaged or foreign file
        raise ConfigError(f"train.init={str(path)!r}: not a safetensors state dict ({type(e).__name__}: "
                          f"{e}).") from None
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                else f"shape of {shapes[0]}: {tuple(state[shapes[0]].shape)} vs {tuple(own[shapes[0]].shape)}")
        raise ConfigError(f"train.init={str(path)!r} does not fit this model ({what}); pretrain with the same "
                          "model arguments (epir pretrain --set model.KEY=VALUE).")
    model.load_state_dict(state, strict=True)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    num_classes: int,
    device: str = "cpu",
    on_epoch: EpochCallback | None = None,
    describe: str = "training",
    teacher: Teacher | None = None,
    history: list[dict[str, float]] | None = None,
) -> InputNorm:
    """Train ``model`` in place on the training samples and return the input normalisation it expects.

    Args:
        model: a fresh model.
        x: training flow maps (N, 3, H, W), 0-255.
        y: training labels (N,).
        cfg: the recipe.
        seed: seeds shuffling and augmentation.
        num_classes: number of classes (for class weights).
        device: torch device.
        on_epoch: called as ``on_epoch(epoch, model, norm)`` after every epoch (progress reporting, or the
            caller's optimistic oracle-epoch bookkeeping; ``fit`` itself never sees test data).
        describe: what is trained (e.g. "fold casme2/sub01 seed 0"), for the divergence error.
        teacher: a model trained on the same rows and its input normalisation: its predictions on each
            (augmented) batch are distilled with ``train.distill_weight`` (:func:`teacher_loss`: soft targets at
            ``train.distill_temperature`` or its predicted class, ``train.distill_target``), on the logits of the
            model's distillation token where it has one (``model.distill_token``, DeiT), else on its logits; ignored
            at ``distill_weight=0``, where the teacher only predicts beside the student (``train.distill_mix``).
        history: when given, one ``{"epoch", "loss", "acc"}`` per epoch is appended: the mean training loss and
            the accuracy on the (augmented) training batches, the training curve.

    Raises:
        DivergedError: the loss became NaN or infinite (checked once per epoch), or the last epoch's mean loss
            exploded past :func:`exploded_loss_limit`.
    """
    if len(x) == 0:
        raise ConfigError("fit() got no training samples.")
    gen = torch.Generator().manual_seed(seed)
    norm = InputNorm.fit(cfg.input_norm, x)
    if cfg.init:
        load_initial_weights(model, cfg.init)
    model.to(device)
    weight = class_weights(y, num_classes, cfg)
    if weight is not None:
        weight = weight.to(device)
    if cfg.distill_weight == 0:  # nothing to learn from the teacher's soft targets: skip its forward passes
        teacher = None
    check_distill_token(model, teacher is not None, describe)

    token = getattr(model, "distill_token", None) is not None  # DeiT: the teacher's term on its own head

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=cfg.label_smoothing)

    opt = make_optimizer(model, cfg)
    averager = WeightAverage([p for p in model.parameters() if p.requires_grad], cfg)
    n = len(x)
    n_steps = steps_per_epoch(n, cfg.batch_size)
    total = cfg.epochs * n_steps
    warmup = cfg.warmup_epochs * n_steps
    with_loss = getattr(model, "forward_with_loss", None)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)  # summed on the device: one sync per epoch, not per step
        correct = torch.zeros((), device=device)
        seen = 0
        order = epoch_order(y, cfg, gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb, yb = augment(x[idx], cfg, gen), y[idx]
            loss_fn = ce
            if cfg.mixup > 0 or cfg.cutmix > 0:  # on the raw maps: the normalisation is affine, so it commutes
                xb, yb, yb2, lam = mix_batch(xb, yb, cfg.mixup, cfg.cutmix, gen)
                yb2 = yb2.to(device)

                def loss_fn(logits: torch.Tensor, target: torch.Tensor, _b: torch.Tensor = yb2, _l: float = lam
                            ) -> torch.Tensor:
                    return _l * ce(logits, target) + (1.0 - _l) * ce(logits, _b)

            extra: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
            if teacher is not None:
                soft = teacher_logits(teacher, xb.to(device))
                label_loss, a = loss_fn, cfg.distill_weight

                def taught(logits: torch.Tensor, _s: torch.Tensor = soft, _a: float = a) -> torch.Tensor:
                    return _a * teacher_loss(logits, _s, cfg)

                def loss_fn(logits: torch.Tensor, target: torch.Tensor, _t: Callable = taught,
                            _f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = label_loss, _a: float = a,
                            _token: bool = token) -> torch.Tensor:
                    # with a distillation token the teacher's term goes on its head instead (``distill``)
                    return (1.0 - _a) * _f(logits, target) + (0.0 if _token else _t(logits))

                if token:
                    extra["distill"] = taught

            xb, yb = norm(xb).to(device), yb.to(device)

            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, warmup, cfg.schedule)
            if with_loss is not None:
                loss, logits = with_loss(xb, yb, loss_fn, **extra)
            else:
                logits = model(xb)
                loss = loss_fn(logits, yb)
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(-1) == yb).sum()
            seen += len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            averager.after_step(step)
            step += 1
        # a NaN or inf at any step carries into the sum: one check (and one sync) per epoch
        check_training_loss(loss_sum / seen, num_classes, [describe], epoch, cfg.lr, last=epoch == cfg.epochs - 1)
        averager.after_epoch(epoch)
        if history is not None:
            history.append({"epoch": epoch, "loss": float(loss_sum) / seen, "acc": float(correct) / seen})
        if on_epoch is not None:
            on_epoch(epoch, model, norm)
    averager.apply()
    check_finite_weights(model.parameters(), describe)
    return norm


def mirror_mean_probabilities(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The mean of the class probabilities of maps ``x`` (B, 3, H, W at 0-255) and of their mirrors
    (:func:`epir.data.augment.mirror_maps`), ``logits_of`` taking both in one batch: the flip test-time
    augmentation (``train.tta=flip``), shared by LOSO's :func:`predict_proba` and the checkpoint's module.
    """
    probs = logits_of(torch.cat([x, mirror_maps(x)])).softmax(-1)
    n = x.shape[0]  # not len(x): the ONNX export traces shape[0] as the dynamic batch size
    return (probs[:n] + probs[n:]) / 2


def snapshot_epochs(epochs: int, snapshots: int) -> list[int]:
    """The 0-based epochs whose end-of-epoch weights are ``train.snapshots``' earlier snapshots, the final weights
    being the last one: ``snapshots - 1`` epochs spread evenly over the second half of training (40 epochs, 4
    snapshots: the ends of epochs 25, 30 and 35, 1-based, beside the final 40). Fixed by the recipe alone.
    """
    half = epochs / 2
    return sorted({epochs - 1 - round(j * half / snapshots) for j in range(1, snapshots)})


class SnapshotMean:
    """``train.snapshots``: the mean of a model's probabilities for ``x`` at the fixed :func:`snapshot_epochs`
    and of its final weights'. :meth:`update` is the training loop's per-epoch callback; it only predicts (the
    epochs are fixed before training, nothing is chosen on ``x``).
    """

    def __init__(self, x: torch.Tensor, cfg: TrainConfig, device: str = "cpu") -> None:
        self.x, self.device, self.tta = x, device, cfg.tta
        self.epochs = set(snapshot_epochs(cfg.epochs, cfg.snapshots))
        self.probs: list[torch.Tensor] = []

    def update(self, epoch: int, model: nn.Module, norm: InputNorm) -> None:
        """After epoch ``epoch`` (0-based): keep the current weights' probabilities if it is a snapshot epoch."""
        if epoch in self.epochs:
            self.probs.append(predict_proba(model, norm, self.x, device=self.device, tta=self.tta))

    def mean(self, final: torch.Tensor) -> torch.Tensor:
        """The snapshots' mean, the final weights' probabilities ``final`` (N, K) being the last snapshot."""
        return torch.stack([*self.probs, final]).mean(dim=0)


def snapshot_callback(
    snaps: Sequence[SnapshotMean],
) -> Callable[[int, int, nn.Module, InputNorm], None] | None:
    """The per-job epoch callback of :func:`epir.engine.selection.train_models` that feeds job ``j``'s model to
    ``snaps[j]``; None when no snapshot epoch is due (``train.snapshots=1``: no per-epoch copies of the weights).
    """
    if not any(s.epochs for s in snaps):
        return None

    def update(job: int, epoch: int, model: nn.Module, norm: InputNorm) -> None:
        snaps[job].update(epoch, model, norm)

    return update


@torch.inference_mode()
def predict_proba(
    model: nn.Module, norm: InputNorm, x: torch.Tensor, *, device: str = "cpu", batch_size: int = 256,
    tta: str = "none",
) -> torch.Tensor:
    """Class probabilities (N, num_classes) of ``model`` in eval mode, for raw 0-255 maps ``x``.

    ``tta="flip"`` (the recipe's ``train.tta``): the mean of the probabilities of each map and of its mirror
    (:func:`mirror_mean_probabilities`), the test-time counterpart of the flip augmentation.
    """
    if tta not in TTA_KINDS:
        raise ConfigError(f"train.tta={tta!r}; expected one of {', '.join(TTA_KINDS)}.")

    def logits_of(xb: torch.Tensor) -> torch.Tensor:
        return model(norm(xb).to(device))

    was_training = model.training
    model.eval()
    out = [(mirror_mean_probabilities(logits_of, xb) if tta == "flip" else logits_of(xb).softmax(-1)).cpu()
           for xb in (x[i : i + batch_size] for i in range(0, len(x), batch_size))]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)

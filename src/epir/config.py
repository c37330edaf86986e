"""Run configuration: a few frozen dataclasses, saved as flat YAML, with dotted ``--set`` overrides.

Sections: ``model`` (the registered name plus the model's keyword arguments), ``data``, ``train`` (the
recipe) and ``eval`` (the LOSO protocol). ``--set train.lr=1e-3`` or ``--set model.dim=32`` changes one
field; values are parsed as YAML scalars and checked against the field's type, and unknown keys are
rejected with a "did you mean".
"""
from __future__ import annotations

import dataclasses
import numbers
import re
import typing
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from epir.errors import ConfigError, did_you_mean

#: Values of ``train.input_norm`` (see ``epir.engine.train.InputNorm``).
INPUT_NORMS = ("none", "scale", "standardize", "recentre")
#: Values of ``train.tta``: no test-time augmentation, or the mean over each map and its mirror.
TTA_KINDS = ("none", "flip")
#: What the student learns from its teacher (``train.distill_target``).
DISTILL_TARGETS = ("soft", "hard")
#: Values of ``train.optimizer``, ``train.schedule``, ``train.class_weight`` and ``train.average``.
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
CLASS_WEIGHTS = ("none", "balanced")
AVERAGES = ("none", "ema", "swa")
#: Values of ``train.order``, the fixed order of the training rows when ``train.shuffle`` is false.
ORDERS = ("rows", "by-class")
#: A Dask scheduler address: ``[PROTOCOL://]HOST:PORT`` (an IPv6 host in brackets), or an in-process ``inproc://``.
DASK_ADDRESS = r"inproc://\S+|([a-z]+://)?(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):\d{1,5}"


@dataclass(frozen=True)
class TrainConfig:
    """How one fold's model is trained (a model's *recipe*)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"  # adam | adamw | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "constant"  # constant | cosine
    warmup_epochs: int = 0
    shuffle: bool = True
    order: str = "rows"  # shuffle=false only: the fixed order of the training rows, every epoch; rows = the
    # dataset's | by-class = sorted by label, stably (the official STSTNet code's: it lists the class folders 0, 1, 2)
    label_smoothing: float = 0.0
    class_weight: str = "none"  # none | balanced (inverse class frequency of the training fold)
    class_weight_power: float = 1.0  # balanced only: each class's weight (n / (K n_c)) ** power; 1 = inverse class
    # frequency, 0.5 = its square root (between none and balanced), 0 = every class alike
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    input_norm: str = "none"  # none | scale (x/255) | standardize (per-channel, training subjects only) | recentre
    hflip: float = 0.0  # probability of a horizontal flip (u mirrored: 255 - u on 0-255 maps)
    translate: int = 0  # max random shift in pixels (border replicated)
    noise: float = 0.0  # std of additive Gaussian noise, in units of the 0-255 scale
    rotate: float = 0.0  # max random rotation in degrees; the (u, v) vectors turn with the pixels
    scale: float = 0.0  # max random relative scaling (0.1: factors in [0.9, 1.1])
    mixup: float = 0.0  # mixup Beta(alpha, alpha) on every batch, labels mixed with the maps' weights; 0 = off
    cutmix: float = 0.0  # CutMix Beta(alpha, alpha): a box pasted from another map, labels mixed by area; 0 = off
    average: str = "none"  # none | ema | swa: weight averaging; the averaged weights are the fold's model
    ema_decay: float = 0.995  # ema only: per-step decay
    swa_start: float = 0.5  # swa only: epoch-end weights are averaged from this fraction of the epochs on
    ensemble: int = 1  # models per fold (own seeds), their class probabilities averaged
    member_overrides: tuple[str, ...] = ()  # one entry per member (train.ensemble of them): that member's own
    # ";"-separated train.* and model.* (arguments, round 32) overrides ("" = the run's recipe), e.g.
    # ["", "train.input_norm=recentre"] or ["", "model.shifts=none;model.patch_overlap=3"]; () = alike
    snapshots: int = 1  # per model: probabilities averaged over the final weights and snapshots-1 earlier
    # epoch ends spread evenly over the second half of training (snapshot_epochs); 1 = the final weights only
    distill: str = ""  # teacher model trained on the same fold's training rows first ("" = no distillation)
    distill_overrides: tuple[str, ...] = ()  # KEY=VALUE on the teacher's default recipe ("train.epochs=100")
    distill_weight: float = 0.5  # weight of the soft-target term; 1 - weight on the labels' cross-entropy
    distill_temperature: float = 2.0  # softmax temperature of the soft targets
    distill_target: str = "soft"  # soft: KL to the teacher's softened probabilities (Hinton) | hard: cross-entropy
    # with the teacher's predicted class (DeiT's hard distillation; the temperature is then unused)
    distill_members: int = 1  # teacher seeds per fold, trained on the same rows: the teacher is their probabilities'
    # mean (an ensemble teacher, for soft targets and for train.distill_mix alike); 1 = a single teacher
    distill_shared: bool = False  # the fold's teacher trained once per train.select_shared group, on the subjects of
    # the other groups (never the held-out subject's group), and shared by that group's folds; needs distill_weight=0
    distill_groups: int = 0  # with distill_shared: the groups the teachers are trained without, the run's subjects
    # dealt into this many (2 to the subject count: each teacher then sees all but 1/G of them); 0: select_shared's
    distill_mix: float = 0.0  # weight m of the teacher's own held-out probabilities in the fold's: (1-m) student +
    # m teacher (a two-model ensemble of different architectures; with distill_weight=0 the student learns from labels)
    select: tuple[str, ...] = ()  # candidates chosen among inside each fold ("train.epochs=20;train.mixup=0.4")
    select_k: int = 3  # inner leave-subjects-out groups of the training subjects for train.select
    select_shared: int = 0  # 0: inner groups drawn inside each fold (select_k); G >= 3: the run's subjects dealt
    # once into G groups shared by all folds; a fold scores on the groups other than its subject's, each predicted by
    # a model trained without it and without that group (G(G-1)/2 inner trainings per seed instead of select_k per fold)
    select_metric: str = "megc"  # megc: the mean of pooled inner UF1 and UAR (highest wins) | nll: the pooled inner
    # negative log-likelihood of the (blended) probabilities, a proper scoring rule (lowest wins)
    select_margin: float = 0.0  # > 0: a candidate other than the run's own configuration (the candidate equal to it,
    # e.g. train.distill_mix=0.5 when distill_mix is 0.5) is chosen only if its inner score beats that one's by more
    # than this (the score's units: mean of UF1 and UAR, or nats with select_metric=nll); 0: the best inner score wins
    select_repeats: int = 1  # the inner groups dealt this many times (repeated leave-subjects-out), the candidates
    # scored on every deal's inner predictions pooled: a less noisy inner estimate at R times the inner cost (round
    # 33); 1 = one deal (the first deal is always the one-deal choice's)
    select_members: bool = False  # train.ensemble > 1: each inner model of the choice is the fold's whole ensemble
    # (every member with its own recipe, model and seed, their probabilities averaged), so that the choice scores what
    # the fold predicts with (round 33); false: the inner models are member 0's recipe alone (half the inner cost
    # with two members)
    subject_fraction: float = 1.0  # LOSO only: each fold trains on this share of its training subjects (at least
    # one), drawn per seed and held-out subject and nested (a smaller share's subjects are among a larger one's); for
    # learning curves. 1 = every training subject. Needs groups drawn inside the fold (select_shared=0)
    init: str = ""  # initial weights (a .safetensors file of `epir pretrain`) loaded before training; "" = random
    tta: str = "none"  # none | flip: test-time augmentation, probabilities averaged over the map and its mirror


#: Criteria of the choice inside the fold (``train.select_metric``).
SELECT_METRICS = ("megc", "nll")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how its samples are fed to the model."""

    dataset: str = "synthetic"
    root: str | None = None  # dataset root; datasets may also read an environment variable
    seed: int = 0  # generator seed (synthetic data only)
    # none (whole-face map) | mosaic (HTNet's four landmark regions) | smooth (Gaussian blur sigma 1 px, renormalised)
    input_transform: str = "none"
    subset: tuple[str, ...] = ()  # source datasets kept (SDE: LOSO inside them alone); empty: all (CDE)


@dataclass(frozen=True)
class EvalConfig:
    """The leave-one-subject-out protocol."""

    seeds: tuple[int, ...] = (0,)
    folds: tuple[str, ...] = ()  # empty: every subject
    oracle_epoch: bool = False  # optimistic: per subject, the epoch with the best test accuracy
    absent_class: str = "skip"  # skip | zero: a class absent from the ground truth in UF1/UAR
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = all cores (1 per worker when jobs > 1)
    jobs: int = 1  # parallel worker processes (joblib), each training groups of folds; -1 = one per core
    fold_batch: int = 0  # models trained at once in one worker (batched folds); 0 = chosen automatically
    report: bool = True  # write report.html (and figures/) in the run directory
    tensorboard: bool = False  # also write the training curves as TensorBoard event files (OUT/tensorboard)
    dask_scheduler: str | None = None  # address of a Dask scheduler (tcp://host:8786): folds run on its workers


@dataclass(frozen=True)
class ModelConfig:
    """A registered model name and its keyword arguments (all of them, once resolved)."""

    name: str = "epir"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a LOSO run's results."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (tuples as lists)."""
        d = dataclasses.asdict(self)
        model = {"name": self.model.name, **self.model.args}
        d["model"] = model
        d["eval"]["seeds"] = list(self.eval.seeds)
        d["eval"]["folds"] = list(self.eval.folds)
        return d

    def to_yaml(self) -> str:
        """The config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """A config from nested dicts; unknown keys are an error with a "did you mean"."""
        d = dict(d)
        unknown = set(d) - {"model", "data", "train", "eval"}
        if unknown:
            raise ConfigError(f"Unknown config sections {sorted(unknown)}; expected model, data, train, eval.")
        model = dict(d.get("model") or {})
        name = model.pop("name", ModelConfig.name)
        cfg = cls(model=ModelConfig(name=name, args=model))
        for section in ("data", "train", "eval"):
            for key, value in (d.get(section) or {}).items():
                cfg = set_value(cfg, f"{section}.{key}", value)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a config.yaml (a run's own, or one written by hand); a missing or malformed file is a ConfigError."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; give a config.yaml (a run directory holds one).")
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}).") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping with sections model, data, train, eval; "
                              f"got a {type(data).__name__}.")
        for section, value in (data or {}).items():
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config file {path}: section {section!r} must be a mapping of KEY: VALUE.")
        return cls.from_dict(data or {})

    def save(self, path: str | Path) -> None:
        """Write the config as YAML to ``path``."""
        Path(path).write_text(self.to_yaml())


#: The keys whose value is one of a few words, and the words (named in type errors: ``train.tta: true``).
KEY_CHOICES: dict[str, tuple[str, ...]] = {
    "train.optimizer": OPTIMIZERS, "train.schedule": SCHEDULES, "train.class_weight": CLASS_WEIGHTS,
    "train.average": AVERAGES, "train.input_norm": INPUT_NORMS, "train.tta": TTA_KINDS,
    "train.distill_target": DISTILL_TARGETS,
    "train.select_metric": SELECT_METRICS, "train.order": ORDERS,
}


def repeated(values: Iterable[Hashable]) -> list[Any]:
    """The values that occur more than once, sorted (a seed, model, switch or lever named twice)."""
    return sorted(v for v, n in Counter(values).items() if n > 1)


def check_seed(seed: Any) -> None:
    """A seed given beside the config (``--seed`` of ``epir train`` and ``epir pretrain``) is a whole number >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed (--seed) must be a whole number >= 0, got {seed!r}.")


def check_setting(ok: bool, key: str, value: Any, expected: str) -> None:
    """Unless ``ok``, stop with a ConfigError in the form of every bad-setting error (``KEY=VALUE: expected ...``)."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {expected}.")


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def check_ranges(cfg: RunConfig) -> None:
    """Range-check every recipe and execution value, so a bad value stops before a run directory is made.

    Raises:
        ConfigError: naming the key, the value and what is expected.
    """
    t, e = cfg.train, cfg.eval
    for key in ("train.optimizer", "train.schedule", "train.class_weight", "train.average", "train.input_norm",
                "train.order"):
        value = getattr(t, key.removeprefix("train."))
        check_setting(value in KEY_CHOICES[key], key, value, " | ".join(KEY_CHOICES[key]))
    check_setting(t.order == "rows" or not t.shuffle, "train.order", t.order,
                  "rows while train.shuffle is true (a fixed order needs train.shuffle=false)")
    check_setting(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    check_setting(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    check_setting(_finite(t.lr) and t.lr > 0, "train.lr", t.lr, "a finite number > 0")
    check_setting(_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay,
                  "a finite number >= 0")
    check_setting(_finite(t.momentum) and 0 <= t.momentum < 1, "train.momentum", t.momentum, "a number in [0, 1)")
    check_setting(t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, "an integer >= 0")
    check_setting(_finite(t.label_smoothing) and 0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing,
                  "a number in [0, 1)")
    check_setting(_finite(t.grad_clip) and t.grad_clip >= 0, "train.grad_clip", t.grad_clip,
                  "a finite number >= 0 (0: off)")
    check_setting(0 <= t.hflip <= 1, "train.hflip", t.hflip, "a probability in [0, 1]")
    check_setting(t.translate >= 0, "train.translate", t.translate, "pixels >= 0")
    check_setting(_finite(t.noise) and t.noise >= 0, "train.noise", t.noise, "a finite number >= 0")
    check_setting(_finite(t.rotate) and 0 <= t.rotate <= 180, "train.rotate", t.rotate, "degrees in [0, 180]")
    check_setting(_finite(t.scale) and 0 <= t.scale < 1, "train.scale", t.scale, "a number in [0, 1)")
    check_setting(_finite(t.mixup) and t.mixup >= 0, "train.mixup", t.mixup, "a Beta alpha >= 0 (0: off)")
    check_setting(_finite(t.cutmix) and t.cutmix >= 0, "train.cutmix", t.cutmix, "a Beta alpha >= 0 (0: off)")
    check_setting(0 < t.ema_decay < 1, "train.ema_decay", t.ema_decay, "a number in (0, 1)")
    check_setting(0 <= t.swa_start < 1, "train.swa_start", t.swa_start, "a fraction in [0, 1)")
    check_setting(t.ensemble >= 1, "train.ensemble", t.ensemble, "an integer >= 1 (models per fold)")
    check_setting(not t.member_overrides or len(t.member_overrides) == t.ensemble, "train.member_overrides",
                  list(t.member_overrides), f"one entry per member: {len(t.member_overrides)} entries need "
                  f"train.ensemble={len(t.member_overrides)} (it is {t.ensemble}), or [] for members alike")
    check_setting(1 <= t.snapshots <= max(1, t.epochs // 2), "train.snapshots", t.snapshots,
                  f"an integer from 1 to train.epochs // 2 = {max(1, t.epochs // 2)} (snapshots taken in the second "
                  "half of training)")
    check_setting(0 <= t.distill_weight <= 1, "train.distill_weight", t.distill_weight, "a number in [0, 1]")
    check_setting(_finite(t.distill_temperature) and t.distill_temperature > 0, "train.distill_temperature",
                  t.distill_temperature, "a number > 0")
    check_setting(t.distill_target in DISTILL_TARGETS, "train.distill_target", t.distill_target,
                  f"{' | '.join(DISTILL_TARGETS)} (soft: the teacher's softened probabilities; hard: its class)")
    check_setting(1 <= t.distill_members <= 64, "train.distill_members", t.distill_members,
                  "an integer from 1 to 64 (teacher seeds per fold, their probabilities averaged)")
    check_setting(t.distill_members == 1 or bool(t.distill), "train.distill_members", t.distill_members,
                  "1 without a teacher; name one with train.distill=MODEL (e.g. ststnet)")
    check_setting(_finite(t.distill_mix) and 0 <= t.distill_mix <= 1, "train.distill_mix", t.distill_mix,
                  "a number in [0, 1] (the teacher's weight in the fold's probabilities)")
    check_setting(t.distill_mix == 0 or bool(t.distill), "train.distill_mix", t.distill_mix,
                  "0 without a teacher; name one with train.distill=MODEL (e.g. ststnet)")
    check_setting(t.tta in TTA_KINDS, "train.tta", t.tta, f"{' | '.join(TTA_KINDS)} (flip: mean of the map's and its "
                  "mirror's probabilities)")
    check_setting(_finite(t.class_weight_power) and 0 <= t.class_weight_power <= 4, "train.class_weight_power",
                  t.class_weight_power, "a number in [0, 4] (the exponent of the balanced weights; 1: inverse class "
                  "frequency, 0.5: its square root)")
    check_setting(t.class_weight_power == 1 or t.class_weight == "balanced", "train.class_weight_power",
                  t.class_weight_power, "1 without class weights; set train.class_weight=balanced to use it")
    check_setting(t.select_k >= 2, "train.select_k", t.select_k, "an integer >= 2")
    check_setting(t.select_metric in SELECT_METRICS, "train.select_metric", t.select_metric,
                  f"{' | '.join(SELECT_METRICS)} (megc: mean of inner UF1 and UAR; nll: inner log-loss)")
    check_setting(_finite(t.select_margin) and t.select_margin >= 0, "train.select_margin", t.select_margin,
                  "a number >= 0 (how much a candidate must beat the run's own configuration by inside the fold)")
    check_setting(1 <= t.select_repeats <= 10, "train.select_repeats", t.select_repeats,
                  "an integer from 1 to 10 (deals of the inner groups; 1: one)")
    check_setting(t.select_repeats == 1 or bool(t.select), "train.select_repeats", t.select_repeats,
                  "1 without a choice inside the fold; give train.select candidates (e.g. the default recipe's)")
    check_setting(not t.select_members or (t.ensemble > 1 and bool(t.select)), "train.select_members",
                  t.select_members, "false without an in-fold ensemble and a choice inside the fold; it "
                  "needs train.ensemble > 1 and train.select candidates (e.g. the default recipe, train.ensemble=2)")
    check_setting(not t.distill_shared or (bool(t.distill) and t.select_shared >= 3 and t.distill_weight == 0),
                  "train.distill_shared", t.distill_shared,
                  "false, or true with a teacher (train.distill), shared groups (train.select_shared >= 3) and "
                  "train.distill_weight=0 (a group's teacher only predicts; soft targets need the fold's own)")
    check_setting(t.distill_groups == 0 or (t.distill_groups >= 2 and t.distill_shared), "train.distill_groups",
                  t.distill_groups, "0 (the group teachers are trained without the train.select_shared groups), or an "
                  "integer >= 2 with train.distill_shared=true (e.g. the default recipe)")
    check_setting(_finite(t.subject_fraction) and 0 < t.subject_fraction <= 1, "train.subject_fraction",
                  t.subject_fraction, "a share in (0, 1] of each fold's training subjects (1: all of them)")
    check_setting(t.subject_fraction == 1 or t.select_shared == 0, "train.subject_fraction", t.subject_fraction,
                  "1 while train.select_shared > 0 (groups shared by all folds train on subjects a fold has left out): "
                  "set train.select_shared=0 and train.distill_shared=false, or give a recipe without them "
                  "(e.g. --recipe alone)")
    check_setting(t.select_shared == 0 or t.select_shared >= 3, "train.select_shared", t.select_shared,
                  "0 (inner groups drawn per fold) or an integer >= 3 (groups of the run's subjects shared by all "
                  "folds)")
    check_setting(e.threads >= 0, "eval.threads", e.threads, "an integer >= 0 (0: all cores)")
    check_setting(e.jobs >= 1 or e.jobs == -1, "eval.jobs", e.jobs, "an integer >= 1, or -1 for one per core")
    check_setting(e.fold_batch >= 0, "eval.fold_batch", e.fold_batch, "an integer >= 0 (0: automatic)")
    check_setting(e.dask_scheduler is None or bool(re.fullmatch(DASK_ADDRESS, e.dask_scheduler)),
                  "eval.dask_scheduler", e.dask_scheduler,
                  "a scheduler address such as tcp://HOST:8786 (`dask scheduler` prints it), with its port")
    check_setting(e.absent_class in ("skip", "zero"), "eval.absent_class", e.absent_class, "skip or zero")
    dup = repeated(e.seeds)
    check_setting(not dup, "eval.seeds", list(e.seeds), f"distinct seeds (repeated: {dup}; each would count twice)")
    check_setting(len(e.seeds) >= 1, "eval.seeds", list(e.seeds), "at least one seed")
    negative = [s for s in e.seeds if s < 0]
    check_setting(not negative, "eval.seeds", list(e.seeds),
                  f"whole numbers >= 0 (got {', '.join(map(str, negative))}), as numpy's seeded draws need")
    dup = repeated(e.folds)
    check_setting(not dup, "eval.folds", list(e.folds), f"distinct subjects (repeated: {dup}; name each fold once)")
    import torch  # a device string is checked by torch itself  # noqa: PLC0415 (epir.config stays importable without loading torch)

    try:
        device = torch.device(e.device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"eval.device={e.device!r}: expected a torch device such as cpu, cuda or cuda:0.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"eval.device={e.device!r}: no CUDA device is available here; set eval.device=cpu "
                          "(--device cpu).")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against the dataclass field type ``typ``; convert where lossless (int -> float)."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if key == "eval.seeds" and isinstance(value, int) and not isinstance(value, bool) and value >= 2:
            warnings.warn(f"eval.seeds: {value} is the one seed {value}, not {value} seeds; for {value} seeds write "
                          f"[{', '.join(map(str, range(value)))}] (--seeds {' '.join(map(str, range(value)))}).",
                          UserWarning, stacklevel=2)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    return coerce_scalar(value, typ, key)


def coerce_scalar(value: Any, typ: type, key: str) -> Any:
    """Check a scalar against ``typ`` (bool, int, float, str), converting int -> float and int-valued str."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    choices = KEY_CHOICES.get(key)
    raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r} ({type(value).__name__})"
                      + (f"; one of {' | '.join(choices)}." if choices else "."))


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a YAML scalar or list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"Cannot parse value {text!r}: {e}") from None


def set_value(cfg: RunConfig, key: str, value: Any) -> RunConfig:
    """Return ``cfg`` with the dotted ``key`` set to ``value`` (type-checked)."""
    section, _, name = key.partition(".")
    sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
    if section not in sections or not name:
        raise ConfigError(
            f"Config key {key!r} must look like SECTION.FIELD with SECTION one of "
            f"{', '.join(sections)}.{did_you_mean(section, sections)}"
        )
    if section == "model":
        if name == "name":
            return replace(cfg, model=replace(cfg.model, name=str(value)))
        # Model arguments are checked against the model's signature when the config is resolved.
        return replace(cfg, model=replace(cfg.model, args={**cfg.model.args, name: value}))
    sub = getattr(cfg, section)
    hints = typing.get_type_hints(type(sub))
    names = [f.name for f in fields(sub)]
    if name not in names:
        raise ConfigError(
            f"Unknown config key {key!r}.{did_you_mean(name, names)} "
            f"Known {section} keys: {', '.join(names)}."
        )
    return replace(cfg, **{section: replace(sub, **{name: _coerce(value, hints[name], key)})})


def parse_key_value(item: str, option: str = "--set", example: str = "train.lr=1e-3") -> tuple[str, Any]:
    """One ``KEY=VALUE`` string as ``(key, value)``, the value parsed like a YAML scalar (:func:`parse_value`);
    ``option`` and ``example`` name the option it came from in the error.

    >>> parse_key_value("train.epochs=20")
    ('train.epochs', 20)
    >>> parse_key_value("model.depths=[1, 2]")
    ('model.depths', [1, 2])
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} expects KEY=VALUE (e.g. {example}), got {item!r}.")
    return key.strip(), parse_value(text)


def format_key_value(key: str, value: Any) -> str:
    """``KEY=VALUE`` with the value written as YAML flow (tuples as lists): what :func:`parse_key_value` reads back.

    >>> format_key_value("train.select", ("train.epochs=20", ""))
    "train.select=[train.epochs=20, '']"
    """
    value = list(value) if isinstance(value, tuple) else value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return f"{key}={text.removesuffix(chr(10) + '...').removesuffix('...').strip()}"


def parse_key_values(items: Sequence[str], option: str = "--set", example: str = "train.lr=1e-3") -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict, in order (the one parser of every ``KEY=VALUE`` option)."""
    return dict(parse_key_value(item, option, example) for item in items)


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """Apply ``key=value`` strings in order."""
    for item in overrides:
        key, value = parse_key_value(item)
        cfg = set_value(cfg, key, value)
    return cfg

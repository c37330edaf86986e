"""The model registry and factory: ``@register_model(recipe=...)`` on a factory; ``create_model(name, **kwargs)``.

Model modules import :func:`register_model` from here (not from the package), so that registering never imports
the package that imports them. See :mod:`epir.models` for the model contract.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import docstring_parser
import torch
from torch import nn

from epir.config import ModelConfig, TrainConfig, check_setting, coerce_scalar
from epir.errors import ConfigError, did_you_mean
from epir.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(
    *,
    recipe: TrainConfig | None = None,
    recipes: dict[str, TrainConfig] | None = None,
    description: str = "",
    batchable: bool = False,
    input_size: int | None = None,
    auto_fold_batch: dict[str, int] | None = None,
    switches: Sequence[str] | None = None,
) -> Callable:
    """Register a model factory; ``recipe`` is its default training recipe, ``recipes`` more named ones;
    ``batchable``: several of its models can train at once as one vectorised model (``epir.engine.batched``:
    every operation works under ``torch.func.vmap``, batch statistics honour ``sample_mask``, and
    ``forward_with_loss``, if any, takes ``valid``); ``input_size``: the map side the model accepts when it
    has no ``image_size`` argument (e.g. STSTNet's 28); ``auto_fold_batch``: per device type, how many of its
    models a worker trains at once by default where the engine's general choice does not suit it (measured);
    ``switches``: the boolean arguments that turn one of its components off when False, what ``epir ablate``
    ablates (default: every boolean argument defaulting to True; ``()`` for a model without optional components).
    """
    recipe = recipe or TrainConfig()
    return MODELS.register(recipe=recipe, recipes={"default": recipe, **(recipes or {})}, description=description,
                           batchable=batchable, input_size=input_size, auto_fold_batch=auto_fold_batch or {},
                           switches=None if switches is None else tuple(switches))


def check_sizes(**sizes: int) -> None:
    """Stop at the first model argument (name -> value) that is not a whole number >= 1 (widths, counts, sides)."""
    for key, value in sizes.items():
        check_setting(isinstance(value, int) and value >= 1, f"model.{key}", value, "an integer >= 1")


def check_rates(**rates: float) -> None:
    """Stop at the first model argument that is not a rate in [0, 1) (dropout, drop-path)."""
    for key, value in rates.items():
        check_setting(0 <= value < 1, f"model.{key}", value, "a rate in [0, 1)")


def check_positive(**values: float) -> None:
    """Stop at the first model argument that is not a finite number > 0 (ratios, temperatures)."""
    for key, value in values.items():
        check_setting(math.isfinite(value) and value > 0, f"model.{key}", value, "a finite number > 0")


def accepted_input_size(name: str, args: dict[str, Any]) -> int | None:
    """The square map side model ``name`` with ``args`` accepts (None: any)."""
    return args.get("image_size", MODELS.meta(name).get("input_size"))


def is_batchable(name: str) -> bool:
    """Whether model ``name`` was registered ``batchable`` (its folds can train batched)."""
    return bool(MODELS.meta(name).get("batchable", False))


#: Models a worker trains at once by default, by device type, for a batchable model that registers no
#: ``auto_fold_batch`` of its own (measured with ``benchmarks/loso_speed.py --repeats 2``). On the 2-core CPU the
#: one-at-a-time loop is faster: EPIR's default recipe 361 s against 382 s batched 4 at once, EPIR alone 245 s
#: against 281 s, with identical scores (round 10; round 2's code had measured 1.1x for 4 at once, before the
#: masks were replayed per model in round 9); on CUDA every fold at once (launch overhead dominates there).
AUTO_FOLD_BATCH = {"cpu": 1, "cuda": 68}


def auto_fold_batch(name: str, device: str = "cpu") -> int:
    """How many models ``name`` a worker trains at once by default on ``device``: the model's own
    ``auto_fold_batch`` for that device type, else :data:`AUTO_FOLD_BATCH` (1 for a device type it does not name).
    """
    kind = torch.device(device).type
    return int(MODELS.meta(name).get("auto_fold_batch", {}).get(kind, AUTO_FOLD_BATCH.get(kind, 1)))


def batches_well(name: str, device: str = "cpu") -> bool:
    """Whether several models ``name`` are best trained at once on ``device``: registered ``batchable``, and its
    :func:`auto_fold_batch` there is above 1 (on CUDA; on the CPU every built-in model trains faster one at a time).
    """
    return is_batchable(name) and auto_fold_batch(name, device) > 1


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching a glob ``pattern``."""
    return MODELS.names(pattern)


def default_recipe(name: str, recipe: str | None = None) -> TrainConfig:
    """The registered default training recipe of model ``name``, or its named ``recipe`` (e.g. htnet's "cpu")."""
    recipes = MODELS.meta(name)["recipes"]
    if recipe is None:
        return MODELS.meta(name)["recipe"]
    if recipe not in recipes:
        raise ConfigError(
            f"Model {name!r} has no recipe {recipe!r}.{did_you_mean(recipe, recipes)} Its recipes: "
            f"{', '.join(recipes)}."
        )
    return recipes[recipe]


def list_recipes(name: str) -> list[str]:
    """Names of model ``name``'s recipes ("default" first)."""
    return list(MODELS.meta(name)["recipes"])


def model_defaults(name: str) -> dict[str, Any]:
    """Keyword arguments of model ``name``'s factory with their defaults."""
    sig = inspect.signature(MODELS.get(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not inspect.Parameter.empty
    }


def describe_args(name: str) -> list[tuple[str, Any, str]]:
    """Model ``name``'s arguments in signature order: ``(argument, default, description)``, the description from
    the factory docstring's ``Args:`` section (``""`` where it has none).
    """
    doc = docstring_parser.parse(inspect.getdoc(MODELS.get(name)) or "")
    text = {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}
    return [(key, default, text.get(key, "")) for key, default in model_defaults(name).items()]


def recipe_settings(name: str, recipe: str | None = None) -> dict[str, Any]:
    """Where model ``name``'s recipe (its default if None) differs from :class:`TrainConfig`'s defaults, as
    ``train.KEY -> value``: what the recipe is, in the ``--set`` keys that would make it.
    """
    base, this = TrainConfig(), default_recipe(name, recipe)
    return {f"train.{f.name}": getattr(this, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(this, f.name) != getattr(base, f.name)}


def resolve_model_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """All keyword arguments of ``name`` with ``args`` applied, type-checked against the defaults."""
    defaults = model_defaults(name)
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    for key, value in args.items():
        if key not in defaults:
            raise ConfigError(
                f"Model {name!r} has no argument {key!r}.{did_you_mean(key, defaults)} "
                f"Its arguments: {', '.join(defaults)}."
            )
        default = defaults[key]
        if default is None or isinstance(default, (list, tuple, dict)):
            out[key] = list(value) if isinstance(value, tuple) else value
        else:
            out[key] = coerce_scalar(value, type(default), f"model.{key}")
    return out


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build registered model ``name``; unknown keyword arguments are an error with a "did you mean", and so is
    a combination of values the model cannot be built from (its own checks name the argument; anything they miss
    still stops as one ConfigError naming the arguments given, never as a traceback from inside torch).
    """
    args = resolve_model_args(name, kwargs)
    factory = MODELS.get(name)
    try:
        return factory(**args)
    except ConfigError:
        raise
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        given = ", ".join(f"model.{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
        raise ConfigError(f"Model {name!r} cannot be built from {given} ({type(e).__name__}: {e}); change those "
                          f"values.") from None


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model a :class:`ModelConfig` names."""
    return create_model(cfg.name, **cfg.args)


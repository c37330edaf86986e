"""Pretraining on the built-in synthetic generator: ``epir pretrain`` writes initial weights a recipe starts from.

A large generated set (``subjects`` x ``clips`` clips through the same TV-L1 flow as the demo set, cached on
disk as ``.npz`` under ``cache_dir``, generated in parallel by subject chunks) trains the model with its default
recipe (``epochs`` overridden); the weights go to ``OUT.safetensors`` with ``OUT.json`` saying how they were made.
A LOSO recipe starts from them with ``train.init=OUT.safetensors`` (every fold and member loads them before
training). The synthetic clips share no subject, clip or statistic with a real dataset, so pretraining cannot
leak a held-out subject. Whether it helps is measured, not assumed (docs/epir-design.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from safetensors.torch import save_file

from epir._version import __version__
from epir.config import EvalConfig, ModelConfig, RunConfig, TrainConfig, check_ranges, check_seed
from epir.data.synthetic import synthetic
from epir.engine.train import fit
from epir.errors import ConfigError
from epir.fileio import writable_parent, write_atomic
from epir.models import build_model, default_recipe, resolve_model_args
from epir.profiling import torch_threads

#: Subjects generated per parallel task (each task is one call of the synthetic generator).
CHUNK_SUBJECTS = 10

#: Pretraining epochs when none are given (the corpus is some 50x a real set, so each epoch is long).
PRETRAIN_EPOCHS = 10


def _chunk(seed: int, n_subjects: int, clips: int) -> tuple[np.ndarray, np.ndarray]:
    data = synthetic(seed=seed, n_subjects=n_subjects, clips_per_subject=clips)
    return data.x.numpy().astype(np.uint8), data.y.numpy().astype(np.int64)


def synthetic_corpus(subjects: int, clips: int, *, seed: int = 1000, cache_dir: str | os.PathLike | None = None,
                     jobs: int = -1) -> tuple[torch.Tensor, torch.Tensor, Path | None]:
    """``subjects`` x ``clips`` generated flow maps (x 0-255 float32, y), cached in ``cache_dir`` (None: not cached).

    Subjects come in chunks of :data:`CHUNK_SUBJECTS`, chunk k from seed ``seed + k``, so the set is the same
    whatever ``jobs`` is. Returns ``(x, y, cache_file)``.
    """
    if subjects < 1 or clips < 2:
        raise ConfigError(f"pretraining needs subjects >= 1 and clips >= 2 per subject, got {subjects} and {clips}.")
    key = hashlib.sha256(f"{subjects}-{clips}-{seed}-{CHUNK_SUBJECTS}-{__version__}".encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() / f"synthetic-{subjects}x{clips}-s{seed}-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            return torch.from_numpy(f["x"].astype(np.float32)), torch.from_numpy(f["y"]), cache
    sizes = [min(CHUNK_SUBJECTS, subjects - k) for k in range(0, subjects, CHUNK_SUBJECTS)]
    parts = Parallel(n_jobs=jobs)(delayed(_chunk)(seed + i, n, clips) for i, n in enumerate(sizes))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: numpy would otherwise append .npz to the temporary name
                np.savez_compressed(fh, x=x, y=y)

        write_atomic(cache, save)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), cache


def pretrain(
    model: str | ModelConfig,
    out: str | os.PathLike,
    *,
    subjects: int = 400,
    clips: int = 50,
    epochs: int = PRETRAIN_EPOCHS,
    seed: int = 0,
    data_seed: int = 1000,
    cache_dir: str | os.PathLike | None = "~/.cache/epir",
    train: TrainConfig | None = None,
    jobs: int = -1,
    progress: bool = True,
    device: str = "cpu",
    threads: int = 0,
) -> Path:
    """Pretrain ``model`` on a generated synthetic set and write ``OUT.safetensors`` and ``OUT.json``.

    Args:
        model: a registered model name or a :class:`~epir.config.ModelConfig` (its arguments must be those of the
            recipe that will start from the weights).
        out: the weights file (``.safetensors`` is added when missing).
        subjects: generated subjects.
        clips: clips per subject (``subjects * clips`` maps; 400 x 50 = 20,000 by default).
        epochs: pretraining epochs (the model's default recipe otherwise).
        seed: seed of the initialisation, batches and augmentation.
        data_seed: seed of the generated set.
        cache_dir: where the generated set is cached (None: not cached).
        train: the recipe (default: the model's default recipe with ``epochs``).
        jobs: processes generating the set (-1: one per core).
        progress: print what happens.
        device: the torch device that trains (the weights are written as CPU tensors).
        threads: torch threads while training (0: as they are).

    Returns:
        The weights file.

    Raises:
        ConfigError: a recipe value, seed, device or thread count that cannot train, before anything is generated.
    """
    model_cfg = ModelConfig(name=model) if isinstance(model, str) else model
    model_cfg = replace(model_cfg, args=resolve_model_args(model_cfg.name, model_cfg.args))
    recipe = replace(train or default_recipe(model_cfg.name), epochs=epochs, init="")
    check_ranges(RunConfig(model=model_cfg, train=recipe, eval=EvalConfig(device=device, threads=threads)))
    check_seed(seed)
    path = Path(out).expanduser()
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    writable_parent(path, "weights file")  # before the corpus and the training, not after
    t0 = time.perf_counter()
    x, y, cache = synthetic_corpus(subjects, clips, seed=data_seed, cache_dir=cache_dir, jobs=jobs)
    t_data = time.perf_counter() - t0
    if progress:
        print(f"epir pretrain: {len(x)} generated maps ({subjects} subjects x {clips} clips) in {t_data:.0f} s"
              + (f", cached in {cache}" if cache else ""), flush=True)
    torch.manual_seed(seed)
    net = build_model(model_cfg)
    t1 = time.perf_counter()
    with torch_threads(threads):
        fit(net, x, y, recipe, seed=seed, num_classes=int(y.max()) + 1, device=device, describe="pretraining")
    t_train = time.perf_counter() - t1
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, str(tmp)))
    meta: dict[str, Any] = {
        "model": {"name": model_cfg.name, "args": model_cfg.args}, "recipe": recipe.__dict__,
        "data": {"generator": "epir.data.synthetic", "subjects": subjects, "clips_per_subject": clips,
                 "samples": len(x), "seed": data_seed}, "seed": seed, "epir_version": __version__,
        "seconds": {"data": round(t_data, 1), "training": round(t_train, 1)},
    }
    write_atomic(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1, default=str)))
    if progress:
        print(f"pretrained {model_cfg.name} for {epochs} epochs in {t_train:.0f} s: {path} (start a recipe from it "
              f"with --set train.init={path})", flush=True)
    return path


__all__ = ["CHUNK_SUBJECTS", "PRETRAIN_EPOCHS", "pretrain", "synthetic_corpus"]

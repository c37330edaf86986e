"""``epir train``: train one model on every subject of a dataset with a recipe and save a checkpoint.

Unlike LOSO, nothing is held out: this is the model a user deploys after having measured, with LOSO, how well
the recipe generalises to unseen subjects. The seed fixes the initialisation, the batches and the augmentation,
so the same command gives the same weights. A recipe that mixes its teacher into the predictions
(``train.distill_mix`` > 0) gives a checkpoint holding both networks, which predicts the blend LOSO scored.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from epir.config import RunConfig, check_ranges, check_seed
from epir.data import FlowDataset
from epir.engine.loso import check_before_training
from epir.engine.selection import select_in_fold, teacher_config, train_teachers
from epir.engine.train import fit
from epir.errors import ConfigError
from epir.fileio import writable_dir
from epir.inference.checkpoint import Checkpoint, make_meta, read_meta, save_checkpoint, teacher_meta
from epir.models import build_model
from epir.preprocess.pipeline import PreprocessSettings
from epir.profiling import torch_threads
from epir.runsetup import check_model_fits, load_data, resolve_config, transform_data


def preprocessing_for(dataset: FlowDataset) -> tuple[dict[str, Any], str]:
    """The preprocessing settings a new clip should go through to resemble ``dataset``'s maps, and a note.

    Returns:
        ``(settings, note)``: ``PreprocessSettings(...).to_dict()`` and a sentence saying where the training
        maps came from. Maps written by ``epir preprocess`` (an ``epir_dataset.json`` beside them) give the
        settings recorded there; a dataset that records its flow settings (``info["flow_method"]``, the built-in
        synthetic set) gives those; a flow-only dataset such as the MEGC2019 composite gives the composite's
        recipe (face crop, TV-L1 with OpenCV's defaults, 28x28, per-channel min-max), which it was made with
        but which this toolkit cannot reproduce bit for bit (the original crops and detector differ).
    """
    info = dataset.info or {}
    size = int(dataset.x.shape[-1])
    sidecar = Path(str(info["root"])) / "epir_dataset.json" if info.get("root") else None
    recorded = None
    if sidecar is not None and sidecar.is_file():
        try:
            recorded = json.loads(sidecar.read_text()).get("settings")
        except (OSError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"{sidecar}: cannot read its 'settings' ({type(e).__name__}: {e}); the checkpoint would record the "
                f"wrong preprocessing. Rerun epir preprocess for that folder, or delete the file."
            ) from None
        if recorded is not None and not isinstance(recorded, dict):
            raise ConfigError(f"{sidecar}: 'settings' must be a mapping of preprocessing settings, got {recorded!r}; "
                              f"rerun epir preprocess for that folder.")
    if isinstance(recorded, dict):  # maps written by `epir preprocess`: their exact settings
        settings = PreprocessSettings.from_dict(recorded)
        note = f"maps written by epir preprocess ({sidecar}) with these preprocessing settings"
    elif "flow_method" in info:
        # The generated frames are whole-face crops already: no alignment, flow at the frames' own size, which
        # reproduces the training maps exactly for a generated clip (override with --preprocess align=true).
        frame_size = int(info.get("frame_size") or PreprocessSettings.crop_size)
        settings = PreprocessSettings(flow_method=str(info["flow_method"]),
                                      flow_params=dict(info.get("flow_params") or {}),
                                      size=size, align=False, crop_size=frame_size)
        note = (f"maps computed by epir ({dataset.name}): {info['flow_method']} flow "
                f"{dict(info.get('flow_params') or {})} between generated onset and apex frames (face crops of "
                f"{frame_size} px, not aligned), resized to {size}x{size}, per-channel min-max 0-255")
    else:
        settings = PreprocessSettings(flow_method="tvl1", flow_params={}, size=size)
        note = (f"flow-only dataset {dataset.name!r}: precomputed onset-to-apex TV-L1 flow of cropped faces, "
                f"{size}x{size}, per-channel min-max 0-255 (the MEGC2019 composite recipe); predict applies these "
                "settings with epir's own face alignment, which approximates the original crops")
    return settings.to_dict(), note


def train_checkpoint(
    cfg: RunConfig,
    out_dir: str | os.PathLike,
    *,
    dataset: FlowDataset | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Checkpoint:
    """Train ``cfg.model`` with ``cfg.train`` on every sample of the dataset and save a checkpoint.

    Args:
        cfg: the run configuration (model, data, recipe; ``eval.device`` and ``eval.threads`` are used, the
            rest of ``eval`` is not). Build one with :func:`epir.make_config`.
        out_dir: the checkpoint directory: ``model.safetensors``, ``checkpoint.json``, ``config.yaml``.
        dataset: the training data; loaded from ``cfg.data`` when omitted. ``data.subset`` and
            ``data.input_transform`` are applied to it here.
        seed: seeds the initialisation, shuffling and augmentation.
        overwrite: replace a checkpoint already in ``out_dir``.
        progress: show a progress bar over the epochs.

    Returns:
        The trained :class:`Checkpoint` (as :func:`~epir.inference.load_checkpoint` would return it).
    """
    cfg = resolve_config(cfg)
    check_ranges(cfg)
    # selection candidates, the teacher's recipe, train.init: before any folder or data (eval's LOSO-only settings,
    # which training a checkpoint does not use, are left out)
    check_before_training(replace(cfg, eval=replace(cfg.eval, tensorboard=False, oracle_epoch=False)))
    # A checkpoint holds one set of weights, so it could not predict as LOSO scored these recipes.
    if cfg.train.snapshots > 1:
        raise ConfigError(f"train.snapshots={cfg.train.snapshots}: a checkpoint holds one model's weights, not an "
                          "average of snapshots; train it with --set train.snapshots=1.")
    if cfg.train.subject_fraction != 1:
        raise ConfigError(f"train.subject_fraction={cfg.train.subject_fraction}: a checkpoint trains on every "
                          "subject; the share of training subjects is for LOSO learning curves (epir loso); train "
                          "it with --set train.subject_fraction=1.")
    if cfg.train.ensemble > 1:
        raise ConfigError(f"train.ensemble={cfg.train.ensemble}: a checkpoint holds one model's weights, not an "
                          "ensemble; train it with --set train.ensemble=1" +
                          (" --set train.member_overrides=[] (or one checkpoint per member's recipe)"
                           if cfg.train.member_overrides else " (or one checkpoint per --seed)") + ".")
    check_seed(seed)
    out = Path(out_dir).expanduser()
    if (out / "checkpoint.json").exists() and not overwrite:  # fail before training, not after
        raise ConfigError(f"{out} already holds a checkpoint; choose another out_dir (--out), or pass overwrite=True "
                          "(--overwrite) to replace it.")
    writable_dir(out, "checkpoint folder")
    dataset = load_data(cfg, dataset)
    preprocessing, note = preprocessing_for(dataset)
    dataset, transform_report = transform_data(cfg, dataset)
    transform_report = transform_report or {"input_transform": "none"}
    check_model_fits(cfg, dataset)
    cfg = replace(cfg, eval=replace(cfg.eval, seeds=(int(seed),), folds=()))
    with torch_threads(cfg.eval.threads):
        return _train_and_save(cfg, dataset, out, seed=seed, overwrite=overwrite, progress=progress,
                               preprocessing=preprocessing, note=note, transform_report=transform_report)


def _train_and_save(cfg: RunConfig, dataset: FlowDataset, out: Path, *, seed: int, overwrite: bool, progress: bool,
                    preprocessing: dict[str, Any], note: str, transform_report: dict[str, Any]) -> Checkpoint:
    """Train on every row of ``dataset`` and save the checkpoint (the body of :func:`train_checkpoint`).

    The recipe as LOSO runs it, with every row as the training rows: ``train.select`` chooses its candidate on
    leave-subjects-out groups of all subjects first, and ``train.distill`` trains the teacher on all rows. When
    the (chosen) recipe mixes the teacher into the predictions (``train.distill_mix`` > 0, e.g. ``--recipe
    teacher-mix``), the checkpoint holds the teacher too and predicts with the same blend LOSO scored.
    """
    t0 = time.perf_counter()
    rows = np.arange(len(dataset))
    selection: dict[str, Any] = {}
    if cfg.train.select:
        cfg, selection = select_in_fold(dataset, cfg, rows, seed, name="epir train", batched=False)
    needs_teacher = cfg.train.distill_weight > 0 or cfg.train.distill_mix > 0
    teachers = train_teachers(dataset, cfg, [(rows, seed, "epir train")], batched=False) if needs_teacher else None
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    bar = tqdm(total=cfg.train.epochs, desc=f"train {cfg.model.name}", unit="epoch", disable=not progress)
    norm = fit(model, dataset.x, dataset.y, cfg.train, seed=seed, num_classes=dataset.num_classes,
               device=cfg.eval.device, on_epoch=lambda *_: bar.update(1),
               teacher=None if teachers is None else teachers[0])
    bar.close()
    seconds = time.perf_counter() - t0
    model.cpu().eval()
    counts = Counter(dataset.y.tolist())
    info = {k: v for k, v in (dataset.info or {}).items() if k != "landmarks"}
    training = {
        "dataset": dataset.name or cfg.data.dataset,
        "root": cfg.data.root,
        "subset": list(cfg.data.subset or ()),
        "subjects": dataset.subject_list(),
        "samples": len(dataset),
        "class_counts": {name: int(counts.get(i, 0)) for i, name in enumerate(dataset.class_names)},
        "seed": int(seed),
        "seconds": round(seconds, 2),
        "input_transform": transform_report,
        "maps": note,
        "dataset_info": info,
        "config": cfg.to_dict(),
    }
    if selection:  # the candidate train.select chose (its config is "config" above) and the inner scores
        training["selection"] = selection
    if teachers is not None:
        training["teacher"] = cfg.train.distill
    teacher, mixed = None, None
    if teachers is not None and cfg.train.distill_mix > 0:  # the teacher predicts too: the checkpoint holds it
        teacher, t_cfg = teachers[0], teacher_config(cfg)
        teacher[0].cpu().eval()
        mixed = teacher_meta(model_name=t_cfg.model.name, model_args=t_cfg.model.args, norm=teacher[1],
                             norm_kind=t_cfg.train.input_norm, mix=cfg.train.distill_mix, tta=t_cfg.train.tta,
                             members=cfg.train.distill_members)
    meta = make_meta(
        model_name=cfg.model.name,
        model_args=cfg.model.args,
        class_names=dataset.class_names,
        norm=norm,
        norm_kind=cfg.train.input_norm,
        input_size=int(dataset.x.shape[-1]),
        transform=cfg.data.input_transform,
        landmarks="per-clip" if str(transform_report.get("landmarks", "")).startswith("per-sample") else "default",
        preprocessing=preprocessing,
        training=training,
        tta=cfg.train.tta,
        teacher=mixed,
    )
    out = save_checkpoint(out, model, meta, config_yaml=cfg.to_yaml(), overwrite=overwrite,
                          teacher=None if teacher is None else teacher[0])
    return Checkpoint(model=model, norm=norm, meta=read_meta(out), path=out, teacher=teacher)


__all__ = ["preprocessing_for", "train_checkpoint"]

"""``epir train``, ``epir predict`` and ``epir export``: using a trained model from the command line.

Wired into ``epir`` by ``add_parser(subparsers)``; the handlers are ``cmd_train``, ``cmd_predict`` and
``cmd_export`` (``args -> int``). Errors are :class:`~epir.errors.EpirError` subclasses, which ``epir``'s
``main`` prints as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from epir.config import check_ranges, parse_key_values
from epir.errors import ConfigError
from epir.inference.app import launch
from epir.inference.export import OPSET, export_onnx
from epir.inference.predictor import Predictor
from epir.inference.training import train_checkpoint
from epir.runsetup import add_run_options, config_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train``, ``predict`` and ``export`` subcommands on ``subparsers``."""
    p = subparsers.add_parser(
        "train", help="train a model on every subject of a dataset and save a checkpoint (for predict/export)",
        description="Train one model on every subject of a dataset with its default recipe (or --recipe, --set, "
                    "...) and save a self-contained checkpoint: model.safetensors, checkpoint.json, config.yaml "
                    "(and teacher.safetensors when the recipe mixes its teacher into the predictions, e.g. "
                    "--recipe teacher-mix). Measure how well the recipe generalises with `epir loso` first; this "
                    "is the model to deploy.",
    )
    add_run_options(p, loso=False)
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, batches and augmentation")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="checkpoint directory (default checkpoints/<model>-<dataset>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "predict", help="predict the class of a clip (video file or frame folder) with a trained checkpoint",
        description="Predict a clip: face alignment, onset-to-apex optical flow and the model, with the "
                    "checkpoint's preprocessing settings. Without --apex the apex is estimated; without --onset "
                    "the first frame is the onset. With --csv, CLIP is a folder of clips, each predicted.",
    )
    p.add_argument("clip", nargs="?", default=None, metavar="CLIP",
                   help="a video file or a folder of frame images (with --csv: a folder of such clips)")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint directory (epir train --out)")
    p.add_argument("--onset", type=int, default=None, metavar="I", help="0-based onset frame (default 0)")
    p.add_argument("--apex", type=int, default=None, metavar="J", help="0-based apex frame (default: estimated)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--explain", nargs="?", const="", default=None, metavar="PNG",
                   help="write a PNG showing the flow and where on the face the decision came from "
                        "(default name: <clip>_explain.png in the current folder)")
    p.add_argument("--csv", default=None, metavar="OUT",
                   help="batch: predict every clip (video file or frame folder) in the folder CLIP, write OUT")
    p.add_argument("--map", default=None, metavar="PNG",
                   help="predict a flow-map image instead of a clip (RGB = u, v, strain, as in the MEGC2019 set)")
    p.add_argument("--no-align", action="store_true",
                   help="frames are already face crops: no face detection, only resizing")
    p.add_argument("--preprocess", dest="preprocess", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preprocessing setting of the checkpoint, e.g. flow_method=farneback (repeatable)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for the model, torch or onnxruntime (default 1: fastest at batch 1)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="what runs the model: torch, onnx (onnxruntime; exports the model in memory, 4-8 s, unless "
                        "--onnx is given) or auto (default: onnxruntime with --onnx FILE, else PyTorch; a --csv folder "
                        "of 5000+ clips is worth the export)")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="an `epir export` file of this checkpoint, run with onnxruntime (checked against the "
                        "checkpoint's weights hash)")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "export", help="export a checkpoint's model to ONNX (input normalisation included)",
        description="Export the model of a checkpoint to ONNX: input x (batch, 3, 28, 28), u, v, strain at 0-255 "
                    "(the normalisation is in the graph); outputs logits and probabilities. The file is checked "
                    "with onnxruntime against PyTorch on random maps.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint directory (epir train --out)")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "app", help="a local web demo over a checkpoint: upload a clip, see the prediction and why (Gradio)",
        description="Start a local web demo (pip install 'epir[app]'): upload a video or frames, see the predicted "
                    "class, probabilities, explanation and timings; a second tab shows a run's report.html.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint directory (epir train --out)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--run-dir", default=None, metavar="DIR", help="a run directory whose report.html to show")
    p.set_defaults(func=cmd_app)


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``epir train``: resolve the config like ``epir loso``, train, save, print a summary."""
    cfg = config_from_args(args)
    check_ranges(cfg)  # before the header line (train_checkpoint checks again, for callers of the library)
    out = Path(args.out) if args.out else (
        Path("checkpoints") / f"{cfg.model.name}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"epir train: {cfg.model.name} on every subject of {cfg.data.dataset} "
          f"({cfg.train.epochs} epochs, seed {args.seed})")
    ckpt = train_checkpoint(cfg, out, seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress)
    tr = ckpt.info.training
    counts = ", ".join(f"{k} {v}" for k, v in tr["class_counts"].items())
    print(f"trained on {tr['samples']} samples of {len(tr['subjects'])} subjects ({counts}) in {tr['seconds']:.1f} s")
    teacher = ckpt.info.teacher
    if teacher is not None:
        print(f"predicts (1 - {teacher.mix:g}) x {ckpt.model_name} + {teacher.mix:g} x its {teacher.model_name} "
              "teacher (trained on the same rows), as LOSO scored the recipe")
    files = "model.safetensors, teacher.safetensors" if teacher is not None else "model.safetensors"
    print(f"checkpoint: {out} ({files}, checkpoint.json, config.yaml)")
    print(f"next: epir predict CLIP --checkpoint {out}   |   epir export --checkpoint {out} --onnx model.onnx")
    return 0


def _preprocess_overrides(args: argparse.Namespace) -> dict:
    out = parse_key_values(args.preprocess, "--preprocess", "flow_method=farneback")
    if args.no_align:
        out["align"] = False
    return out


def _default_explain_path(args: argparse.Namespace) -> Path:
    source = Path(args.map or args.clip)
    stem = (source.stem if source.suffix else source.name).strip()
    return Path(f"{stem or 'clip'}_explain.png")


def cmd_predict(args: argparse.Namespace) -> int:
    """Handler of ``epir predict``: one clip (table or --json), a flow map (--map), or a folder (--csv)."""
    if (args.clip is None) == (args.map is None):
        raise ConfigError("epir predict takes a CLIP (video file or frame folder) or --map PNG (exactly one).")
    if args.csv and args.explain is not None:
        raise ConfigError("--explain writes one figure per clip; leave it out with --csv (batch), or predict one clip.")
    if args.map and (args.csv or args.onset is not None or args.apex is not None):
        raise ConfigError("--map predicts a flow map: --csv, --onset and --apex do not apply.")
    predictor = Predictor.load(args.checkpoint, preprocess=_preprocess_overrides(args), threads=args.threads,
                               backend=args.backend, onnx=args.onnx)
    if args.csv:
        df = predictor.predict_folder(args.clip, args.csv, onset=args.onset, apex=args.apex, progress=not args.json)
        if args.json:
            print(df.to_json(orient="records", indent=2))
        else:
            with pd.option_context("display.max_rows", None, "display.width", 200):
                print(df.drop(columns=["error"] if not df["error"].any() else []).to_string(index=False))
            failed = int((df["error"] != "").sum())
            print(f"{len(df)} clips, {failed} failed; wrote {args.csv}; model: {predictor.backend_note}")
        failed = int((df["error"] != "").sum())
        if failed:  # like epir preprocess: a clip that failed is not a result (its reason is in the CSV)
            print(f"epir predict: {failed} of {len(df)} clips failed (see the 'error' column of {args.csv})",
                  file=sys.stderr)
            return 2
        return 0
    pred = predictor.predict_map_file(args.map) if args.map else predictor.predict(args.clip, args.onset, args.apex)
    explained = None
    if args.explain is not None:
        explained = predictor.explain(pred, Path(args.explain) if args.explain else _default_explain_path(args))
    if args.json:
        out = pred.to_dict()
        if explained is not None:
            out["explain"] = str(explained)
        print(json.dumps(out, indent=2))
        return 0
    print(pred.format())
    order = ("read", "face", "apex", "flow", "map", "model")
    parts = ", ".join(f"{k} {pred.timings[k] * 1000:.1f}" for k in order if k in pred.timings)
    print(f"time: {pred.timings['total'] * 1000:.1f} ms ({parts} ms)")
    print(f"model: {predictor.backend_note}")
    if explained is not None:
        print(f"explanation: {explained}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``epir export``: write the ONNX file and report the onnxruntime check."""
    if Path(args.onnx).is_file() and not args.overwrite:
        raise ConfigError(f"{args.onnx} exists; pass --overwrite to replace it, or choose another --onnx file.")
    report = export_onnx(args.checkpoint, args.onnx, opset=args.opset or OPSET, check=not args.no_check)
    print(f"wrote {report.path} ({report.bytes / 1e6:.2f} MB, opset {report.opset}); input x (batch, 3, 28, 28) "
          "u, v, strain at 0-255; outputs logits, probabilities")
    if report.max_abs_diff is not None:
        print(f"onnxruntime vs PyTorch on {report.check_samples} random maps: max |logit difference| "
              f"{report.max_abs_diff:.2e}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """Handler of ``epir app``: the local web demo over a checkpoint."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected a TCP port from 1 to 65535.")
    launch(args.checkpoint, host=args.host, port=args.port, run_dir=args.run_dir)
    return 0


__all__ = ["add_parser", "cmd_app", "cmd_export", "cmd_predict", "cmd_train"]

"""Latency of a trained model in use (issue 6): the EPIR model alone at batch 1, in PyTorch and onnxruntime, what
each Predictor backend costs to set up, and the whole ``epir predict`` path for a 2-frame clip with the share of
each stage, for both backends; and one whole prediction of the default recipe (EPIR flipped, three STSTNet teachers)
beside EPIR alone. Prints markdown tables.

    python benchmarks/predict_latency.py                 # EPIR with its default arguments, ~1 min on 2 cores
    python benchmarks/predict_latency.py --repeats 200

Latency does not depend on the weights, so the checkpoint is EPIR with its default arguments, untrained, saved
and loaded like any other (a temporary directory). The clip: two 640x480 frames (a camera frame) holding a
generated 256-pixel face, onset and apex given (no apex estimation), read from PNG files like a frame folder.
Each number is the median over ``--repeats`` calls after warm-up calls (dlib's models load during warm-up).

Backends (``Predictor(..., backend=)``): ``torch``; ``onnx`` on an ``epir export`` file (``onnx=FILE``); ``onnx``
exported in memory. The set-up table times the Predictor's construction (the export included) and its first
``predict_proba``, and says after how many predictions the export pays for itself (what ``backend="auto"``
goes by: ``epir.inference.predictor.AUTO_ONNX_MIN_CLIPS``).

Stages of the predict path (``Prediction.timings``): ``face`` (dlib detection, 68 landmarks, alignment and
crop of both frames), ``flow`` (optical flow and strain on the 128x128 crops), ``model`` (the network with its
normalisation, batch 1, one thread), ``read`` (decoding the two PNGs), ``other`` (the 28x28 map and our own
Python around the stages).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from epir import make_config
from epir.data.synthetic import random_subject, render_face
from epir.engine.cost import prediction_cost, prediction_module
from epir.engine.train import InputNorm
from epir.inference import Predictor, load_checkpoint
from epir.inference.checkpoint import make_meta, save_checkpoint
from epir.inference.export import export_onnx, onnx_session, random_maps
from epir.inference.predictor import AUTO_ONNX_MIN_CLIPS
from epir.models import create_model, resolve_model_args
from epir.preprocess.face import FaceAligner
from epir.profiling import median_ms


def make_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("epir").eval()
    norm = InputNorm(torch.tensor([120.0, 125.0, 40.0]).reshape(1, 3, 1, 1),
                     torch.tensor([45.0, 45.0, 35.0]).reshape(1, 3, 1, 1))
    meta = make_meta(model_name="epir", model_args=resolve_model_args("epir", {}),
                     class_names=("negative", "positive", "surprise"), norm=norm, norm_kind="standardize",
                     input_size=28, preprocessing={"flow_method": "tvl1", "size": 28, "align": True, "crop_size": 128})
    return save_checkpoint(directory / "epir", model, meta)


def make_clip(directory: Path) -> Path:
    """Two 640x480 frames with a generated 256 px face (a lip-corner pull between them) that dlib detects."""
    aligner = FaceAligner()
    for seed in range(50):
        style = random_subject(np.random.default_rng(seed), 256)
        onset, apex = render_face(style, None), render_face(style, {"AU12": 2.0, "AU6": 1.0})
        frames = []
        for face in (onset, apex):
            frame = np.full((480, 640, 3), 90, np.uint8)
            frame[112:368, 192:448] = face
            frames.append(frame)
        try:
            aligner.align(frames[0])
        except Exception:
            continue
        folder = directory / "clip"
        folder.mkdir()
        for i, f in enumerate(frames):
            cv2.imwrite(str(folder / f"img{i + 1}.png"), f)
        return folder
    raise RuntimeError("no generated face was detected by dlib in 50 tries")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=100, help="timed calls per measurement (model alone)")
    p.add_argument("--clip-repeats", type=int, default=20, help="timed calls of the whole predict path")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="epir-latency-"))
    ckpt = load_checkpoint(make_checkpoint(tmp))
    model = ckpt.inference_model()
    x = random_maps(1)
    rows = []
    with torch.inference_mode():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows.append((f"PyTorch {torch.__version__.split('+')[0]}, {threads} thread{'s' if threads > 1 else ''}",
                         median_ms(lambda: model(x), args.repeats)))
    torch.set_num_threads(1)
    report = export_onnx(ckpt, tmp / "epir.onnx")
    import onnxruntime as ort  # noqa: PLC0415 (optional dependency: after the export that needs it)

    for threads in (1, 2):
        session = onnx_session(tmp / "epir.onnx", threads=threads)
        feed = {"x": x.numpy()}
        rows.append((f"onnxruntime {ort.__version__}, {threads} thread{'s' if threads > 1 else ''}",
                     median_ms(lambda: session.run(["logits"], feed), args.repeats)))

    load = os.getloadavg()[0]
    print(f"## EPIR (default arguments, {sum(p.numel() for p in ckpt.model.parameters()):,} parameters) alone, "
          f"batch 1, input normalisation included\n")
    print(f"CPU: {os.cpu_count()} cores, load average {load:.1f} at the start; median of {args.repeats} calls; "
          f"ONNX parity max |diff| {report.max_abs_diff:.1e}\n")
    print("| runtime | ms per map |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")

    # what `epir train` with the default recipe puts in a checkpoint: EPIR on the map and its mirror, and the three
    # STSTNet teachers blended in (epir.engine.cost.prediction_module: the same module, untrained)
    cfg = make_config("epir")
    whole, cost = prediction_module(cfg), prediction_cost(cfg, (3, 28, 28))
    print(f"\n## One whole prediction of the default recipe (flip, {cfg.train.distill_members} {cfg.train.distill} "
          f"teachers): {cost.params_total:,} parameters, {cost.flops_total:,} FLOPs, against EPIR alone ("
          f"{cost.flops:,})\n")
    print("| PyTorch threads | EPIR alone ms | whole prediction ms | whole / alone |")
    print("|---|---|---|---|")
    with torch.inference_mode():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            alone, all_of_it = [], []
            for _ in range(5):  # interleaved, so that load from elsewhere slows both alike
                alone.append(median_ms(lambda: model(x), args.repeats // 5 or 1))
                all_of_it.append(median_ms(lambda: whole(x), args.repeats // 5 or 1))
            a, w = statistics.median(alone), statistics.median(all_of_it)
            print(f"| {threads} | {a:.3f} | {w:.3f} | {w / a:.2f} |")
    torch.set_num_threads(1)

    print("\n## Predictor backends: set-up and per-prediction cost (EPIR, batch 1, one thread)\n")
    print("| backend | set-up s (Predictor(...)) | first call ms | median ms per map |")
    print("|---|---|---|---|")
    setups = {}
    for name, kwargs in (("torch", {"backend": "torch"}), ("onnx, `epir export` file", {"onnx": tmp / "epir.onnx"}),
                         ("onnx, exported in memory", {"backend": "onnx"})):
        t = time.perf_counter()
        predictor = Predictor(ckpt, **kwargs)
        setup = time.perf_counter() - t
        m = x[0].numpy()
        t = time.perf_counter()
        predictor.predict_proba(m)
        first = 1000.0 * (time.perf_counter() - t)
        per = median_ms(lambda: predictor.predict_proba(m), args.repeats)
        setups[name] = (setup, per)
        print(f"| {name} ({predictor.backend}) | {setup:.2f} | {first:.2f} | {per:.3f} |")
    export_s, onnx_ms = setups["onnx, exported in memory"]
    saved = setups["torch"][1] - onnx_ms
    print(f"\nThe in-memory export pays for itself after {export_s / (saved / 1000.0):,.0f} predictions "
          f"({export_s:.1f} s / {saved:.2f} ms saved each); AUTO_ONNX_MIN_CLIPS = {AUTO_ONNX_MIN_CLIPS}.")

    clip = make_clip(tmp)
    print("\n## `epir predict` on a 2-frame clip (two 640x480 PNG frames, onset 0, apex 1 given)\n")
    print(f"Median of {args.clip_repeats} calls after 3 warm-up calls; cv2 threads {cv2.getNumThreads()}, "
          "model threads 1 (the Predictor's default); onnx runs the `epir export` file.\n")
    print("| flow method | backend | total ms | read (2 PNGs) | face | flow | model | other (map, our Python) |")
    print("|---|---|---|---|---|---|---|---|")
    for method in ("tvl1", "farneback", "dis"):
        for backend in ("torch", "onnx"):
            extra = {"onnx": tmp / "epir.onnx"} if backend == "onnx" else {"backend": "torch"}
            predictor = Predictor(ckpt, preprocess={"flow_method": method}, **extra)
            for _ in range(3):
                predictor.predict(clip, onset=0, apex=1)
            timings = [predictor.predict(clip, onset=0, apex=1).timings for _ in range(args.clip_repeats)]
            stages = ("read", "face", "flow", "model")
            med = {k: statistics.median(t[k] for t in timings) * 1000.0 for k in (*stages, "total")}
            med["other"] = statistics.median(t["total"] - sum(t[k] for k in stages) for t in timings) * 1000.0
            total = med["total"]
            digits = {k: (2, 1) if k == "model" else (1, 0) for k in (*stages, "other")}  # the model's share is small
            cells = " | ".join(f"{med[k]:.{d}f} ({100 * med[k] / total:.{sd}f}%)" for k, (d, sd) in digits.items())
            print(f"| {method} | {predictor.backend} | {total:.1f} | {cells} |")


if __name__ == "__main__":
    main()

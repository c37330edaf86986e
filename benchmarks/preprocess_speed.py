"""Speed and accuracy of ``epir preprocess`` for each optical flow method, on generated clips.

Two measurements per flow method (tvl1, farneback, dis) at the working resolution (128x128 face crops):

1. **Throughput**: clips per second through the whole pipeline (:func:`epir.preprocess.preprocess_dataset`
   on a generated CASME II-layout tree: 640x480 JPEG frames with a drawn face, dlib detection and 68
   landmarks, alignment and crop, flow, strain, map, the npz/PNG/CSV outputs) with ``--jobs 2`` on a warm
   process pool (the pool's start and dlib's model load, paid once per process, are reported apart), plus the
   mean seconds per clip of the face and flow steps inside a worker.
2. **Accuracy**: the mean end-point error (EPE, pixels) of the flow against the known flow of generated
   frame pairs: an aligned 128x128 drawn-face crop (skin texture included) and the same crop warped by
   (a) a known smooth warp (a small affine motion plus Gaussian bumps, up to ~1.5 px) and (b) the
   synthetic generator's local action-unit motions (~1 px, zero elsewhere). The true onset->apex flow of a
   backward warp is solved exactly (fixed point); EPE is averaged over the crop minus an 8 px border, for
   (b) only where the true motion exceeds 0.25 px (the moving skin).

    python benchmarks/preprocess_speed.py                 # 24 clips, 6 faces (about a minute on 2 cores)
    python benchmarks/preprocess_speed.py --clips 48 --jobs 2

Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from epir.data.synthetic import displacement, random_subject, render_face
from epir.preprocess import FaceAligner, NoFaceError, PreprocessSettings, compute_flow, preprocess_dataset

#: (row name, flow method, flow parameters): the three methods with their defaults, and TV-L1 with the
#: synthetic dataset's earlier stop (epsilon 0.05), a common speed-up.
VARIANTS = (("tvl1", "tvl1", {}), ("farneback", "farneback", {}), ("dis", "dis", {}),
            ("tvl1, epsilon 0.05", "tvl1", {"epsilon": 0.05}))
FRAME = (640, 480)  # CASME II's raw frame size
FACE = 288  # side of the drawn face inside the frame
CROP = 128  # the working resolution (PreprocessSettings.crop_size)
BORDER = 8
OFFSET = ((FRAME[0] - FACE) // 2, (FRAME[1] - FACE) // 2)  # top-left of the drawn face in the frame
MOVING = 0.25  # px: where the local AU motion is measured


def detectable_seeds(n: int) -> list[int]:
    """The first ``n`` subject seeds whose drawn face dlib finds (some cartoon faces are missed)."""
    aligner, seeds, seed = FaceAligner(), [], 0
    while len(seeds) < n:
        try:
            aligner.align(frame(random_subject(np.random.default_rng(seed), size=FACE), {}))
            seeds.append(seed)
        except NoFaceError:
            pass
        seed += 1
    return seeds


def frame(style, au: dict[str, float], noise: int = 0) -> np.ndarray:
    """A 640x480 frame with the drawn face (``au`` applied, sensor noise of seed ``noise``) in the middle."""
    out = np.empty((FRAME[1], FRAME[0], 3), np.uint8)
    out[:] = np.clip(style.background, 0, 255).astype(np.uint8)
    x, y = OFFSET
    out[y:y + FACE, x:x + FACE] = render_face(style, au, rng=np.random.default_rng(noise))
    return out


def make_tree(root: Path, seeds: list[int], clips: int) -> Path:
    """A CASME II-layout tree of ``clips`` clips (11 frames each, apex at frame 5) and its coding sheet."""
    rows = []
    aus = ("AU12", "AU4", "AU1", "AU26", "AU15")
    for i in range(clips):
        style = random_subject(np.random.default_rng(seeds[i % len(seeds)]), size=FACE)
        sub, clip = f"sub{i % len(seeds) + 1:02d}", f"EP{i:02d}_01f"
        folder = root / "CASME2_RAW_selected" / sub / clip
        folder.mkdir(parents=True)
        for k in range(11):
            t = 1.0 - abs(k - 5) / 5.0
            cv2.imwrite(str(folder / f"img{100 + k}.jpg"), frame(style, {aus[i % len(aus)]: 1.5 * t}, noise=k))
        rows.append([sub[3:], clip, "", 100, 105, 110, "", "12", "happiness"])
    header = ["Subject", "Filename", "", "OnsetFrame", "ApexFrame", "OffsetFrame", "", "Action Units",
              "Estimated Emotion"]
    pd.DataFrame([header, *rows]).to_excel(root / "CASME2-coding-20140508.xlsx", header=False, index=False)
    return root


def throughput(root: Path, work: Path, jobs: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    t = time.perf_counter()  # warm the pool: start the workers and load dlib's models in each
    preprocess_dataset("casme2", root, work / "warmup", labels="composite", jobs=jobs, progress=False,
                       settings=PreprocessSettings(flow_method="dis"))
    out["_pool_start"] = {"seconds": time.perf_counter() - t}
    for i, (name, method, params) in enumerate(VARIANTS):
        s = preprocess_dataset("casme2", root, work / str(i), labels="composite", jobs=jobs, progress=False,
                               settings=PreprocessSettings(flow_method=method, flow_params=params))
        if s.skipped:
            raise SystemExit(f"{s.skipped} clips skipped:\n{s.text()}")
        records = json.loads((work / str(i) / "manifest.json").read_text())["clips"].values()
        timings = pd.DataFrame([r["timings"] for r in records])
        out[name] = {"clips_per_s": s.ok / s.seconds, "face": timings["face"].mean(), "flow": timings["flow"].mean()}
    return out


def true_forward_flow(backward: np.ndarray) -> np.ndarray:
    """Flow u of onset->apex when apex(x) = onset(x - d(x)): solves u(p) = d(p + u(p)) by fixed point."""
    h, w = backward.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = backward.copy()
    for _ in range(10):
        u = cv2.remap(backward, xs + u[..., 0], ys + u[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return u


def smooth_warp(rng: np.random.Generator) -> np.ndarray:
    """A smooth backward displacement field (CROP, CROP, 2): small affine motion plus three Gaussian bumps."""
    ys, xs = np.mgrid[0:CROP, 0:CROP].astype(np.float32) - CROP / 2
    a = rng.normal(0, 0.004, (2, 2))
    d = np.stack([a[0, 0] * xs + a[0, 1] * ys + rng.normal(0, 0.3), a[1, 0] * xs + a[1, 1] * ys + rng.normal(0, 0.3)],
                 axis=-1)
    for _ in range(3):
        cx, cy = rng.uniform(-35, 35, 2)
        s = rng.uniform(8, 18)
        g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))[..., None]
        d = d + g * rng.uniform(-1.2, 1.2, 2)
    return d.astype(np.float32)


def au_warp(style, face, rng: np.random.Generator) -> np.ndarray:
    """The backward displacement (crop pixels) of one random action unit of the generator."""
    au = {str(rng.choice(["AU12", "AU4", "AU1", "AU26", "AU15", "AU6"])): float(rng.uniform(1.0, 2.0))}
    inv = np.linalg.inv(np.vstack([face.matrix, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:CROP, 0:CROP].astype(np.float32)
    px = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2] - OFFSET[0]).astype(np.float32)  # face pixels
    py = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2] - OFFSET[1]).astype(np.float32)
    dx, dy = displacement(style, au, px, py)
    return (np.stack([dx, dy], axis=-1) @ face.matrix[:, :2].T).astype(np.float32)


def end_point_errors(seeds: list[int]) -> dict[str, dict[str, float]]:
    aligner = FaceAligner(size=CROP)
    errors: dict[str, dict[str, list[float]]] = {name: {"smooth": [], "au": []} for name, _, _ in VARIANTS}
    truths: dict[str, list[float]] = {"smooth": [], "au": []}
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        style = random_subject(np.random.default_rng(seed), size=FACE)
        face = aligner.align(frame(style, {}))
        onset = face.image
        ys, xs = np.mgrid[0:CROP, 0:CROP].astype(np.float32)
        for kind, d in (("smooth", smooth_warp(rng)), ("au", au_warp(style, face, rng))):
            apex = cv2.remap(onset, xs - d[..., 0], ys - d[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            truth = true_forward_flow(d)
            region = np.zeros((CROP, CROP), bool)
            region[BORDER:-BORDER, BORDER:-BORDER] = True
            if kind == "au":  # the moving skin only: the motion is zero elsewhere
                region &= np.linalg.norm(truth, axis=2) > MOVING
            truths[kind].append(float(np.linalg.norm(truth[region], axis=1).mean()))
            for name, method, params in VARIANTS:
                flow = compute_flow(onset, apex, method, params=params)
                errors[name][kind].append(float(np.linalg.norm(flow[region] - truth[region], axis=1).mean()))
    out = {m: {k: float(np.mean(v)) for k, v in e.items()} for m, e in errors.items()}
    out["_truth"] = {k: float(np.mean(v)) for k, v in truths.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=24, help="clips in the generated tree")
    p.add_argument("--faces", type=int, default=6, help="distinct drawn subjects")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    t0 = time.perf_counter()
    seeds = detectable_seeds(a.faces)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_tree(Path(tmp) / "raw", seeds, a.clips)
        speed = throughput(root, Path(tmp) / "out", a.jobs)
    epe = end_point_errors(seeds)
    print(f"{a.clips} generated clips (640x480 JPEG frames, drawn faces), {CROP}x{CROP} face crops, "
          f"--jobs {a.jobs}, warm pool (start + dlib model load: {speed['_pool_start']['seconds']:.1f} s once)\n")
    print("| flow method | clips/s (whole pipeline) | face s/clip | flow s/clip | EPE smooth warp (px) | "
          "EPE local AU motion (px) |")
    print("|---|---|---|---|---|---|")
    for m, _, _ in VARIANTS:
        s, e = speed[m], epe[m]
        print(f"| {m} | {s['clips_per_s']:.2f} | {s['face']:.3f} | {s['flow']:.3f} | {e['smooth']:.3f} | "
              f"{e['au']:.3f} |")
    truth = epe["_truth"]
    print(f"\nmean true flow magnitude (the EPE of a zero flow): smooth warp {truth['smooth']:.3f} px over the crop, "
          f"local AU motion {truth['au']:.3f} px where it exceeds {MOVING} px; {len(seeds)} faces; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""``epir preprocess``: a raw dataset, a video file or a frame folder to optical-flow maps.

    epir preprocess casme2 --root /data/CASME2 --out data/casme2-flow --labels composite --jobs 2
    epir preprocess composite --root /data/megc --out data/composite-flow --flow farneback
    epir preprocess recording.avi --out data/new                    # one clip: onset = first frame, apex estimated

Wired into ``epir`` by ``add_parser(subparsers)``; the handler is ``cmd_preprocess(args) -> int``, which
returns 2 when a clip was skipped unless ``--skip-bad`` is given.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from epir.config import parse_key_values
from epir.datasets import list_raw_datasets
from epir.errors import ConfigError, did_you_mean
from epir.preprocess.apex import APEX_METHODS
from epir.preprocess.batch import REPORT_NAME, preprocess_dataset, save_clip
from epir.preprocess.flow import FLOW_METHODS
from epir.preprocess.pipeline import PreprocessSettings, process_video

ANNOTATED = "annotated"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``preprocess`` subcommand on ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "preprocess", help="raw frames or videos to optical-flow maps (face alignment, TV-L1, strain)",
        description="Turn a raw micro-expression dataset (its frame folders and label sheet), or one clip (a video "
                    "file or a frame folder), into u, v, strain flow maps in the layout the megc2019 loader reads: "
                    "dlib face and landmarks, alignment on the eye line, onset-to-apex optical flow, optical "
                    "strain, 28x28 maps. Cached and resumable: run it again with the same --out to reuse finished "
                    "clips. See docs/preprocessing.md.",
    )
    p.add_argument("dataset", metavar="DATASET",
                   help=f"a raw dataset ({', '.join(list_raw_datasets())}), or a video file / frame folder of one clip")
    p.add_argument("--root", default=None, metavar="RAW",
                   help="the raw dataset's folder (or one above it; composite: the folder holding the three)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (reused as the cache)")
    p.add_argument("--sheet", action="append", default=[], metavar="FILE",
                   help="the label sheet (default: found inside RAW); composite: DATASET=FILE, repeatable")
    p.add_argument("--labels", default=None, metavar="SCHEME",
                   help="label scheme (default: composite for the composite set, else the dataset's native one)")
    p.add_argument("--flow", default="tvl1", choices=FLOW_METHODS, help="optical flow method (default tvl1)")
    p.add_argument("--flow-param", dest="flow_params", action="append", default=[], metavar="KEY=VALUE",
                   help="a flow parameter, e.g. epsilon=0.05 for tvl1 (repeatable)")
    p.add_argument("--size", type=int, default=28, help="side of the output maps (default 28, the composite's)")
    p.add_argument("--crop-size", type=int, default=128, help="side of the face crop: the flow's working resolution")
    p.add_argument("--margin", type=float, default=0.2, help="face crop margin, a fraction of the face size (0.2)")
    p.add_argument("--no-align", action="store_true", help="no face detection: frames are already face crops")
    p.add_argument("--apex", default=ANNOTATED, metavar="HOW",
                   help=f"'{ANNOTATED}' (default: the sheet's apex, estimated with max_flow where it has none) or an "
                        f"estimation method for every clip: {', '.join(APEX_METHODS)}; for one clip also a 0-based "
                        "frame index")
    p.add_argument("--onset", type=int, default=None, help="one clip: 0-based onset index (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="clips processed in parallel processes (-1: one per core)")
    p.add_argument("--skip-bad", action="store_true",
                   help="exit 0 even when clips were skipped (no face, missing or unreadable frames; see report.csv)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_preprocess)
    return p


def _flow_params(items: list[str]) -> dict[str, Any]:
    return parse_key_values(items, "--flow-param", "epsilon=0.05")


def _settings(args: argparse.Namespace, apex_method: str | None) -> PreprocessSettings:
    return PreprocessSettings(flow_method=args.flow, flow_params=_flow_params(args.flow_params), size=args.size,
                              align=not args.no_align, margin=args.margin, crop_size=args.crop_size,
                              apex_method=apex_method or "max_flow", annotated_apex=apex_method is None)


def _sheets(items: list[str], dataset: str) -> Any:
    if not items:
        return None
    if dataset == "composite":
        out = {}
        for item in items:
            name, sep, path = item.partition("=")
            if not sep:
                raise ConfigError(f"The composite set reads one sheet per dataset: --sheet casme2=FILE (also samm=, "
                                  f"smic=), got --sheet {item!r}.")
            out[name.strip()] = path
        return out
    if len(items) > 1:
        raise ConfigError(f"{dataset} reads one label sheet; got --sheet {len(items)} times.")
    name, sep, path = items[0].partition("=")
    return path if sep and name == dataset else items[0]


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Handler of ``epir preprocess``: a dataset (with --root) or one clip (a path)."""
    if args.dataset in list_raw_datasets():
        return _dataset(args)
    path = Path(args.dataset).expanduser()
    if path.exists():
        return _one_clip(args, path)
    names = list_raw_datasets()
    raise ConfigError(f"{args.dataset!r} is neither a raw dataset nor an existing video file or frame folder."
                      f"{did_you_mean(args.dataset, names)} Raw datasets: {', '.join(names)}.")


def _dataset(args: argparse.Namespace) -> int:
    if args.root is None:
        raise ConfigError(f"epir preprocess {args.dataset} needs --root RAW: the folder holding the raw dataset.")
    if args.onset is not None:
        raise ConfigError("--onset is for one clip (a video file or frame folder); datasets take it from the sheet.")
    apex = args.apex
    if apex != ANNOTATED and apex not in APEX_METHODS:
        raise ConfigError(f"--apex {apex!r}: expected '{ANNOTATED}' or one of {', '.join(APEX_METHODS)}."
                          f"{did_you_mean(apex, [ANNOTATED, *APEX_METHODS])}")
    settings = _settings(args, None if apex == ANNOTATED else apex)
    summary = preprocess_dataset(args.dataset, args.root, args.out, sheet=_sheets(args.sheet, args.dataset),
                                 labels=args.labels, settings=settings, jobs=args.jobs,
                                 progress=not args.no_progress)
    print(summary.text())
    if summary.skipped and not args.skip_bad:
        print(f"epir preprocess: {summary.skipped} clip(s) skipped (reasons in {summary.out / REPORT_NAME}); fix them "
              "or rerun with --skip-bad to accept the others.", file=sys.stderr)
        return 2
    return 0


def _one_clip(args: argparse.Namespace, path: Path) -> int:
    if args.root or args.sheet or args.labels:
        raise ConfigError("--root, --sheet and --labels are for datasets; one clip takes --onset and --apex.")
    apex_index, method = None, None
    if args.apex != ANNOTATED:
        try:
            apex_index = int(args.apex)
        except ValueError:
            if args.apex not in APEX_METHODS:
                raise ConfigError(f"--apex {args.apex!r}: expected a 0-based frame index or one of "
                                  f"{', '.join(APEX_METHODS)}.{did_you_mean(args.apex, APEX_METHODS)}") from None
            method = args.apex
    settings = _settings(args, method)
    result = process_video(path, onset=args.onset, apex=apex_index, settings=settings)
    out = Path(args.out).expanduser()
    name = path.stem if path.is_file() else path.name
    save_clip(result, out / f"{name}.npz", out / f"{name}.png", settings, {"source": str(path)})
    info = {"clip": str(path), "onset": result.onset, "apex": result.apex, "apex_estimated": result.apex_estimated,
            "map": str(out / f"{name}.png"), "npz": str(out / f"{name}.npz"),
            "timings": {k: round(v, 4) for k, v in result.timings.items()}}
    print(json.dumps(info, indent=2))
    return 0

"""``epir annotations DATASET SHEET [--labels SCHEME] [--csv OUT]``: a label sheet as the canonical table.

Wired into ``epir`` by ``add_parser(subparsers)``; the handler is ``cmd_annotations(args) -> int``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from epir.datasets import NATIVE, READERS, list_schemes, read_annotations
from epir.fileio import writable_parent


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``annotations`` subcommand on ``subparsers``; returns its parser."""
    natives = ", ".join(f"{d}: {s}" for d, s in NATIVE.items())
    p = subparsers.add_parser(
        "annotations", help="read a dataset's own label sheet into the canonical annotation table",
        description="Read a dataset's own label sheet (CASME II, SAMM, SMIC, CAS(ME)^3) into epir's canonical "
                    "annotation table (dataset, subject, clip, onset, apex, offset, emotion, label, ...), with the "
                    "packaged annotation fixes applied, and print it or write it as CSV.",
    )
    p.add_argument("dataset", metavar="DATASET", help=f"one of {', '.join(READERS)}")
    p.add_argument("sheet", metavar="SHEET", help="the label sheet (.xlsx as distributed, or a .csv export)")
    p.add_argument("--labels", default="native", metavar="SCHEME",
                   help=f"label scheme: {', '.join(list_schemes())}, 'native' (default; {natives}) "
                        "or 'none' (every row, no label)")
    p.add_argument("--csv", default=None, metavar="OUT", help="write the table to OUT instead of printing it")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--fixes", default=None, metavar="CSV", help="your own fixes table instead of the packaged one")
    group.add_argument("--no-fixes", action="store_true", help="apply no annotation fixes (the sheet as written)")
    p.set_defaults(func=cmd_annotations)
    return p


def cmd_annotations(args: argparse.Namespace) -> int:
    """Handler of ``epir annotations``: print the table (or write ``--csv``), then a one-line summary."""
    labels = None if args.labels.lower() == "none" else args.labels
    fixes = False if args.no_fixes else (args.fixes or True)
    df = read_annotations(args.dataset, args.sheet, labels=labels, fixes=fixes)
    if args.csv:
        df.to_csv(writable_parent(args.csv, "annotation table (--csv)"), index=False)
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250):
            print(df.to_string(index=False))
    print(summary(df) + (f"\nwrote {args.csv}" if args.csv else ""))
    return 0


def summary(df: pd.DataFrame) -> str:
    """One line: clips, subjects, the count of each class, fixes applied and rows flagged."""
    attrs = df.attrs
    text = (f"{attrs.get('dataset')} {Path(attrs.get('sheet', '')).name}: {len(df)} clips, "
            f"{df['subject'].nunique()} subjects")
    if attrs.get("scheme"):
        counts = df["label"].value_counts()
        classes = ", ".join(f"{name} {int(counts.get(i, 0))}" for i, name in enumerate(attrs["classes"]))
        text += f"; scheme {attrs['scheme']}: {classes}"
    flagged = int((df["issue"] != "").sum())
    return text + f"; {len(attrs.get('fixes', []))} fixes applied; {flagged} rows flagged in 'issue'"

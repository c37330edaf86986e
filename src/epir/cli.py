"""The ``epir`` command: a thin argparse layer over the public API. ``main(argv) -> int``."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from epir.config import RunConfig, apply_overrides, set_value
from epir.errors import EpirError



SUBSET_HELP = ("single-dataset evaluation (SDE): LOSO inside these source datasets alone (e.g. casme2; several "
               "allowed); the run is labelled SDE(...). Default: every source (CDE)")


DASK_HELP = ("run the folds on a Dask cluster (tcp://HOST:8786; start one with `dask scheduler` and "
             "`dask worker ADDRESS`); finished folds are saved as they arrive")


JOBS_HELP = ("parallel worker processes, one torch thread each (-1: one per core). Default: one per core, "
             "or 1 when --threads is given")

FOLD_BATCH_HELP = ("models a worker trains at once as one vectorised model (folds, seeds); 1: one at a time. "
                   "Default: chosen for the model and device (models that cannot be batched train one at a time)")


def _add_run_options(p: argparse.ArgumentParser, *, model: str | None = "epir") -> None:
    """Options shared by every command that trains (loso, demo, ablate)."""
    if model is not None:
        p.add_argument("--model", default=model, help="registered model name (epir list models)")
    p.add_argument("--dataset", default=None, help="registered dataset name (epir list datasets; default synthetic)")
    p.add_argument("--root", default=None, help="dataset root (megc2019: or $EPIR_MEGC2019_ROOT)")
    p.add_argument("--config", default=None, help="a config.yaml to start from (e.g. a run's own)")
    p.add_argument("--recipe", default=None, help="a named recipe of the model instead of its default "
                                                   "(e.g. htnet: official, cpu; `epir list models` names them)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. train.weight_decay=0.01 or model.dim=32 (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", help="repeat the whole LOSO for each seed (default 0)")
    p.add_argument("--folds", nargs="+", metavar="SUBJECT", help="run only these subjects' folds")
    p.add_argument("--subset", nargs="+", metavar="SOURCE", help=SUBSET_HELP)
    p.add_argument("--oracle-epoch", action="store_true",
                   help="OPTIMISTIC protocol of published baselines: per subject, the epoch with the best test "
                        "accuracy; every output is labelled 'oracle-epoch (optimistic)'")
    p.add_argument("--device", default=None, help="torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (given alone: one process with that many threads)")
    p.add_argument("--jobs", type=int, default=None, help=JOBS_HELP)
    p.add_argument("--fold-batch", type=int, default=None, metavar="N", help=FOLD_BATCH_HELP)
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS", help=DASK_HELP)
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<dataset>-<time>); "
                                               "rerunning with the same --out resumes finished folds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_const", const=True, default=None,
                   help="also write the training curves as TensorBoard event files (needs pip install tensorboard)")


#: Command-line flags that set one config field each.
FLAG_KEYS = (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "train.lr"),
             ("device", "eval.device"), ("threads", "eval.threads"), ("jobs", "eval.jobs"),
             ("subset", "data.subset"), ("dask_scheduler", "eval.dask_scheduler"), ("fold_batch", "eval.fold_batch"),
             ("tensorboard", "eval.tensorboard"))


def default_jobs(args: argparse.Namespace) -> int | None:
    """Worker processes when --jobs is not given: one per core (a plain command uses the whole machine), or
    None (the configuration's value) when --threads pins this process's threads or --config is given."""
    if not hasattr(args, "jobs") or args.jobs is not None or getattr(args, "threads", None) is not None:
        return None
    return None if getattr(args, "config", None) else -1


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the flags of FLAG_KEYS set (None where a flag was not given)."""
    return {key: getattr(args, flag, None) for flag, key in FLAG_KEYS}


def build_config(args: argparse.Namespace, model: str | None = None) -> RunConfig:
    """Resolve a RunConfig: the model's default recipe, then --config, the flags, then --set."""
    from epir.engine.loso import make_config

    cfg = RunConfig.load(args.config) if args.config else make_config(model or args.model, recipe=args.recipe)
    values = {"data.dataset": args.dataset, "data.root": args.root, **flag_values(args)}
    if values["eval.jobs"] is None:
        values["eval.jobs"] = default_jobs(args)
    for key, value in values.items():
        if value is not None:
            cfg = set_value(cfg, key, value)
    if args.seeds:
        cfg = replace(cfg, eval=replace(cfg.eval, seeds=tuple(args.seeds)))
    if args.folds:
        cfg = replace(cfg, eval=replace(cfg.eval, folds=tuple(args.folds)))
    if args.oracle_epoch:
        cfg = replace(cfg, eval=replace(cfg.eval, oracle_epoch=True))
    return apply_overrides(cfg, args.overrides)


def _default_out(cfg: RunConfig, kind: str = "loso") -> Path:
    return Path("runs") / f"{kind}-{cfg.model.name}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _print_results(results: dict[str, Any], out: Path | None) -> None:
    from epir.engine.results import format_summary

    print(format_summary(results, title=f"{results.get('model')} on {results.get('dataset')}"))
    if out is not None:
        print(f"run directory: {out}")


def cmd_list(args: argparse.Namespace) -> int:
    from epir.data import DATASETS, load_dataset
    from epir.models import MODELS

    if args.what == "models":
        for name in MODELS.names():
            recipes = ", ".join(MODELS.meta(name)["recipes"])
            print(f"{name:<14} {MODELS.meta(name).get('description', '')}  [recipes: {recipes}]")
    elif args.what == "datasets":
        for name in DATASETS.names():
            print(f"{name:<14} {DATASETS.meta(name).get('description', '')}")
    else:
        ds = load_dataset(args.dataset, root=args.root)
        for s in ds.subject_list():
            print(f"{s}\t{ds.subjects.count(s)}")
    return 0


def cmd_loso(args: argparse.Namespace) -> int:
    from epir.engine.loso import run_loso

    cfg = build_config(args)
    out = Path(args.out) if args.out else _default_out(cfg)
    results = run_loso(cfg, out_dir=out, fold_weights=args.fold_weights, progress=not args.no_progress)
    _print_results(results, out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from epir.engine.loso import run_loso

    args.dataset = "synthetic"
    cfg = build_config(args)
    out = Path(args.out) if args.out else _default_out(cfg, "demo")
    print(f"epir demo: LOSO of {cfg.model.name!r} on the built-in synthetic set ({cfg.train.epochs} epochs per fold)")
    results = run_loso(cfg, out_dir=out, progress=not args.no_progress)
    _print_results(results, out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from epir.engine.evaluate import evaluate_megc_log, evaluate_run_dir
    from epir.engine.results import format_summary

    if (args.run_dir is None) == (args.megc_log is None):
        raise EpirError("epir evaluate takes a RUN_DIR or --megc-log FILE (exactly one).")
    results = evaluate_megc_log(args.megc_log) if args.megc_log else evaluate_run_dir(args.run_dir)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_summary(results, title=f"evaluate {args.megc_log or args.run_dir}"))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from epir.models import list_models
    from epir.profiling import profile_model

    names = list_models() if args.model == "all" else [args.model]
    kwargs = {k.removeprefix("model."): v for k, v in _parse_sets(args.overrides).items()}
    rows = [profile_model(n, **(kwargs if args.model != "all" else {})) for n in names]
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    else:
        print(f"{'model':<14} {'params':>12} {'FLOPs/sample':>14} {'ms @ b1':>9} {'ms @ b64':>9}")
        for r in rows:
            print(f"{r['model']:<14} {r['params']:>12,} {r['flops_per_sample']:>14,} "
                  f"{r['latency_ms_b1']:>9.3f} {r['latency_ms_b64']:>9.3f}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from epir.engine.ablate import run_ablation

    cfg = build_config(args)
    out = Path(args.out) if args.out else _default_out(cfg, "ablate")
    run_ablation(cfg, out, switches=args.switches, levers=args.levers, progress=not args.no_progress)
    print((out / "ablation.md").read_text())
    print(f"run directory: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from epir.engine.compare import run_compare

    flags = flag_values(args)
    if flags["eval.jobs"] is None:
        flags["eval.jobs"] = default_jobs(args)
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    out = Path(args.out) if args.out else Path("runs") / f"compare-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_compare(args.models, out, dataset=args.dataset, root=args.root, seeds=args.seeds, folds=args.folds or (),
                protocol=args.protocol, overrides=overrides, recipes=_parse_recipes(args.recipes),
                progress=not args.no_progress)
    print((out / "comparison.md").read_text())
    print(f"run directory: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from epir.engine.report import build_report, to_markdown, write_report

    table = build_report(args.run_dirs)
    out = Path(args.out) if args.out else Path("runs") / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_report(table, out)
    print(to_markdown(table))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _parse_recipes(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, name = item.partition(":")
        if not sep or not model or not name:
            raise EpirError(f"--recipe expects MODEL:NAME (e.g. htnet:cpu), got {item!r}.")
        out[model] = name
    return out


def _parse_sets(items: list[str]) -> dict[str, Any]:
    from epir.config import parse_value

    out = {}
    for item in items:
        if "=" not in item:
            raise EpirError(f"--set expects KEY=VALUE, got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epir", description="Micro-expression recognition: honest LOSO evaluation, MEGC metrics, EPIR."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list registered models, datasets, or a dataset's subjects")
    p.add_argument("what", choices=["models", "datasets", "subjects"])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("loso", help="leave-one-subject-out training and evaluation")
    _add_run_options(p)
    p.add_argument("--fold-weights", default=None, metavar="DIR",
                   help="evaluate DIR/<subject>.pth per fold instead of training")
    p.set_defaults(func=cmd_loso)

    p = sub.add_parser("demo", help="LOSO on the built-in synthetic set with a small model (about a minute)")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ablate", help="honest LOSO of a model and of each component switched off, one table")
    _add_run_options(p)
    p.add_argument("--switches", nargs="+", default=None, metavar="NAME",
                   help="components to switch off (default: all of the model's switches)")
    p.add_argument("--levers", nargs="+", default=None, metavar="LEVER",
                   help="recipe levers to add, one arm each: mixup, ema, swa, rotate, ensemble, distill, conv-stem, "
                        "select-epochs, or all")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("compare", help="several models on the same folds and seeds: one table and figures")
    p.add_argument("--models", nargs="+", required=True, metavar="MODEL")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--folds", nargs="+", metavar="SUBJECT")
    p.add_argument("--subset", nargs="+", metavar="SOURCE", help=SUBSET_HELP)
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS", help=DASK_HELP)
    p.add_argument("--protocol", choices=["honest", "oracle-epoch"], default="honest",
                   help="oracle-epoch is OPTIMISTIC (epoch chosen on each held-out subject) and labelled so")
    p.add_argument("--recipe", dest="recipes", action="append", default=[], metavar="MODEL:NAME",
                   help="a named recipe for one model, e.g. htnet:cpu (default: each model's default recipe)")
    p.add_argument("--epochs", type=int, help="override every model's epochs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                   help="override a config field for every model, or for one with MODEL: in front")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None, help=JOBS_HELP)
    p.add_argument("--fold-batch", type=int, default=None, metavar="N", help=FOLD_BATCH_HELP)
    p.add_argument("--out", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evaluate", help="recompute the metrics of a run directory or a MEGC2019 log")
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR")
    p.add_argument("--megc-log", default=None, metavar="FILE", help="a MEGC2019 submission log")
    p.add_argument("--json", action="store_true", help="print the results.json keys as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="the paper-style table (CDE and SDE columns) from finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories (epir loso --out), or compare/ablate directories holding several")
    p.add_argument("--out", default=None, help="where report.md, report.csv and report.tex go "
                                               "(default runs/report-<time>)")
    p.set_defaults(func=cmd_report)

    from epir.annotations.cli import add_parser as add_annotations

    add_annotations(sub)

    from epir.preprocess.cli import add_parser as add_preprocess

    add_preprocess(sub)

    from epir.inference.cli import add_parser as add_inference  # train, predict, export

    add_inference(sub)

    p = sub.add_parser("profile", help="parameters, FLOPs per sample and CPU latency of a model")
    p.add_argument("--model", default="epir", help="a registered model, or 'all'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``epir`` command line; returns the exit code."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.func(args) or 0)
    except EpirError as e:
        print(f"epir {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished folds are saved; run the same command with the same --out to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

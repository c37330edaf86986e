"""The ``epir`` command: a thin argparse layer over the public API. ``main(argv) -> int``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from epir.annotations.cli import add_parser as add_annotations
from epir.config import RunConfig, format_key_value, parse_key_values
from epir.data import DATASETS, load_dataset
from epir.engine.ablate import LEVERS, describe_levers, run_ablation
from epir.engine.compare import run_compare
from epir.engine.cost import input_shape, profile_recipe
from epir.engine.evaluate import (
    agreement_of_runs,
    compare_parts,
    compare_runs,
    evaluate_megc_log,
    evaluate_run_dir,
    format_agreement_of_runs,
    format_part_scores,
    part_scores,
)
from epir.engine.loso import run_loso
from epir.engine.pretrain import PRETRAIN_EPOCHS, pretrain
from epir.engine.report import build_report, to_markdown, write_report
from epir.engine.results import ORACLE, format_summary
from epir.engine.uncertainty import LEVEL, METHOD, METHODS, RESAMPLES, format_difference, format_subject_differences
from epir.errors import ConfigError, EpirError
from epir.inference.cli import add_parser as add_inference
from epir.models import MODELS, default_recipe, describe_args, list_models, list_recipes, recipe_settings
from epir.preprocess.cli import add_parser as add_preprocess
from epir.profiling import profile_model, torch_threads
from epir.runsetup import (
    add_data_options,
    add_execution_options,
    add_recipe_options,
    add_run_options,
    check_root,
    config_from_args,
    flag_values,
    make_config,
)

#: The former name of :func:`epir.runsetup.config_from_args`.
build_config = config_from_args


def _default_out(cfg: RunConfig, kind: str = "loso") -> Path:
    return Path("runs") / f"{kind}-{cfg.model.name}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _print_results(results: dict[str, Any], out: Path | None) -> None:
    print(format_summary(results, title=f"{results.get('model')} on {results.get('dataset')}"))
    if out is not None:
        print(f"run directory: {out}")


def cmd_list(args: argparse.Namespace) -> int:
    """Handler of ``epir list``: registered models, a model's arguments or recipes, datasets, or subjects."""
    if args.what == "models":
        for name in MODELS.names():
            recipes = ", ".join(MODELS.meta(name)["recipes"])
            print(f"{name:<14} {MODELS.meta(name).get('description', '')}  [recipes: {recipes}]")
    elif args.what == "args":
        for key, default, text in describe_args(args.model):
            print(f"{format_key_value(f'model.{key}', default):<34}  {text}")
    elif args.what == "recipes":
        default = default_recipe(args.model)
        for recipe in list_recipes(args.model):
            if recipe == "default":
                continue
            mark = "  (the default)" if default_recipe(args.model, recipe) == default else ""
            print(f"{recipe}{mark}")
            for key, value in recipe_settings(args.model, recipe).items():
                print(f"    {format_key_value(key, value)}")
    elif args.what == "levers":
        for lever, arm, note, settings in describe_levers(make_config(args.model)):
            print(f"{lever:<20} {arm or '(not on this model)':<22} {note}")
            print(f"{'':<20} {' '.join(settings)}")
    elif args.what == "datasets":
        for name in DATASETS.names():
            print(f"{name:<14} {DATASETS.meta(name).get('description', '')}")
    else:
        check_root(args.dataset, args.root)
        ds = load_dataset(args.dataset, root=args.root)
        for s in ds.subject_list():
            print(f"{s}\t{ds.subjects.count(s)}")
    return 0


def cmd_loso(args: argparse.Namespace) -> int:
    """Handler of ``epir loso``: resolve the config, run LOSO, print the summary."""
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else _default_out(cfg)
    results = run_loso(cfg, out_dir=out, fold_weights=args.fold_weights, progress=not args.no_progress)
    _print_results(results, out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Handler of ``epir demo``: LOSO on the built-in synthetic set."""
    args.dataset = "synthetic"
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else _default_out(cfg, "demo")
    print(f"epir demo: LOSO of {cfg.model.name!r} on the built-in synthetic set ({cfg.train.epochs} epochs per fold)")
    results = run_loso(cfg, out_dir=out, progress=not args.no_progress)
    _print_results(results, out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``epir evaluate``: score a run directory or a MEGC2019 log."""
    if (args.run_dir is None) == (args.megc_log is None):
        raise EpirError("epir evaluate takes a RUN_DIR or --megc-log FILE (exactly one).")
    ci = {"resamples": args.resamples, "level": args.level, "method": args.method}
    if args.per_subject and args.versus is None:
        raise EpirError("--per-subject compares two runs subject by subject: give the other with --versus RUN_DIR.")
    run = args.megc_log or args.run_dir
    if args.parts and args.megc_log:
        raise EpirError("--parts reads a run's parts from its fold files: give a RUN_DIR, not --megc-log.")
    bootstrap = {"resamples": args.resamples, "level": args.level}
    # with --parts: the blend's agreement with --versus's run, and the parts' with each other (where both are asked)
    agreed = (agreement_of_runs(run, args.versus, parts=args.parts and args.versus is None, **bootstrap)
              if args.agreement else None)
    parts_agreed = agreement_of_runs(run, parts=True, **bootstrap) if args.agreement and args.parts and \
        args.versus is not None else None
    if args.parts and not args.agreement and args.versus is None:  # each part's own score
        scored = part_scores(run, **ci)
        if args.json:
            print(json.dumps({"parts": scored}, indent=2))
            return 0
        print(format_part_scores(scored, run))
        return 0
    if args.versus is not None:
        diff = compare_runs(run, args.versus, per_subject=args.per_subject, **ci)
        parts = compare_parts(run, args.versus, **ci) if args.parts else None
        if args.json:
            extra = {key: value for key, value in (("agreement", agreed), ("parts", parts),
                                                   ("parts_agreement", parts_agreed)) if value is not None}
            print(json.dumps({**diff, **extra}, indent=2))
            return 0
        for name, protocol, seeds in zip(diff["names"], diff["protocols"], diff["seeds"]):
            print(f"{name}: {protocol}, seeds {seeds}")
        print(format_difference(diff))
        for part in parts.values() if parts is not None else ():
            print(format_difference(part))
        if args.per_subject:
            print(format_subject_differences(diff["per_subject"]))
        for table in (agreed, parts_agreed):
            if table is not None:
                print(format_agreement_of_runs(table))
        if ORACLE in diff["protocols"]:
            print(f"NOTE: a run is {ORACLE}: its scores were picked on the held-out subjects' test data.")
        return 0
    results = evaluate_megc_log(args.megc_log, **ci) if args.megc_log else evaluate_run_dir(args.run_dir, **ci)
    if args.json:
        print(json.dumps(results if agreed is None else {**results, "agreement": agreed}, indent=2))
        return 0
    print(format_summary(results, title=f"evaluate {run}"))
    if agreed is not None:
        print(format_agreement_of_runs(agreed))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Handler of ``epir profile``: parameters, FLOPs and latency of models."""
    names = list_models() if args.model == "all" else [args.model]
    kwargs = {k.removeprefix("model."): v for k, v in parse_key_values(args.overrides).items()}
    if args.threads < 0:
        raise ConfigError(f"epir profile --threads {args.threads}: expected an integer >= 0 (0: torch's own setting, "
                          "one thread per core; 1: steadier under load).")
    with torch_threads(args.threads) as threads:
        rows = [profile_model(n, **(kwargs if args.model != "all" else {})) for n in names]
        for r in rows if args.recipe is not None else ():  # one whole prediction: every network, each pass
            cfg = make_config(r["model"], recipe=None if args.recipe == "default" else args.recipe,
                              overrides=args.overrides if args.model != "all" else ())
            r.update(recipe=args.recipe, **profile_recipe(cfg, input_shape(cfg)))
        for r in rows:
            r["threads"] = threads
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    else:
        print(f"{'model':<14} {'params':>12} {'FLOPs/sample':>14} {'ms @ b1':>9} {'ms @ b64':>9}  "
              f"(latencies on {rows[0]['threads']} torch thread{'s' if rows[0]['threads'] > 1 else ''})")
        for r in rows:
            print(f"{r['model']:<14} {r['params']:>12,} {r['flops_per_sample']:>14,} "
                  f"{r['latency_ms_b1']:>9.3f} {r['latency_ms_b64']:>9.3f}")
        for r in rows if args.recipe is not None else ():
            flops = "-" if r["flops_total"] is None else f"{r['flops_total']:,}"
            print(f"{r['model']}, recipe {r['recipe']}: one prediction takes {r['params_total']:,} parameters, "
                  f"{flops} FLOPs per sample and {r['latency_total_ms_b1']:.3f} ms at batch 1 (every network that "
                  "predicts, each forward pass)")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """Handler of ``epir ablate``: the full model, each switch off, each lever on."""
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else _default_out(cfg, "ablate")
    run_ablation(cfg, out, switches=args.switches, levers=args.levers, progress=not args.no_progress)
    print((out / "ablation.md").read_text())
    print(f"run directory: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Handler of ``epir compare``: several models on the same folds and seeds."""
    flags = flag_values(args)
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    out = Path(args.out) if args.out else Path("runs") / f"compare-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_compare(args.models, out, dataset=args.dataset, root=args.root, seeds=args.seeds, folds=args.folds or (),
                protocol=args.protocol, overrides=overrides, recipes=_parse_recipes(args.recipes),
                progress=not args.no_progress)
    print((out / "comparison.md").read_text())
    print(f"run directory: {out}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Handler of ``epir pretrain``: weights from a large generated synthetic set, for ``train.init``."""
    cfg = config_from_args(args)
    # 10 epochs unless the epochs were given: --epochs, or a train.epochs (--set, --config, --recipe) other than the
    # model's default recipe's
    given = cfg.train.epochs != default_recipe(cfg.model.name).epochs
    epochs = args.epochs if args.epochs is not None else cfg.train.epochs if given else PRETRAIN_EPOCHS
    pretrain(cfg.model, args.out, subjects=args.subjects, clips=args.clips, seed=args.seed, epochs=epochs,
             cache_dir=None if args.no_cache else args.cache_dir, train=cfg.train, jobs=args.jobs or -1,
             progress=not args.no_progress, device=cfg.eval.device, threads=cfg.eval.threads)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Handler of ``epir report``: a paper-style table from run directories."""
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



def make_parser() -> argparse.ArgumentParser:
    """The ``epir`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="epir", description="Micro-expression recognition: honest LOSO evaluation, MEGC metrics, EPIR."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list registered models, a model's arguments or recipes, datasets, or a dataset's "
                                    "subjects")
    p.add_argument("what", choices=["models", "args", "recipes", "levers", "datasets", "subjects"],
                   help="args: --model's arguments (--set model.KEY=VALUE) with their defaults; recipes: --model's "
                        "named recipes (--recipe NAME), each as the train settings it changes; levers: the recipe "
                        "levers of epir ablate --levers and epir compare's MODEL+LEVER, each with the arm it makes "
                        "on --model's default recipe (+ on, - off) and the settings that arm changes")
    p.add_argument("--model", default="epir",
                   help="the model of `list args`, `list recipes` and `list levers` (default epir)")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("loso", help="leave-one-subject-out training and evaluation")
    add_run_options(p)
    p.add_argument("--fold-weights", default=None, metavar="DIR",
                   help="evaluate DIR/<subject>.pth per fold instead of training")
    p.set_defaults(func=cmd_loso)

    p = sub.add_parser("demo", help="LOSO on the built-in synthetic set with a small model (about a minute)")
    add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ablate", help="honest LOSO of a model and of each component switched off, one table")
    add_run_options(p)
    p.add_argument("--switches", nargs="*", default=None, metavar="NAME",
                   help="components to switch off (default: all of the model's switches; --switches with no name: "
                        "none, the full configuration and the lever arms only)")
    p.add_argument("--levers", nargs="+", default=None, metavar="LEVER",
                   help="recipe levers, one arm each (+LEVER, or -LEVER where the configuration has it on): "
                        f"{', '.join(LEVERS)}, or all (epir list levers: what each does)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("pretrain", help="pretrain a model on a large generated synthetic set (weights for train.init)",
                       description="Generate SUBJECTS x CLIPS synthetic clips (TV-L1 flow, cached), train the model "
                                   "on them with its recipe (for 10 epochs unless --epochs or train.epochs says "
                                   "otherwise), write OUT.safetensors and OUT.json. A LOSO recipe starts from the "
                                   "weights with --set train.init=OUT.safetensors.")
    add_run_options(p, loso=False, data=False)
    p.add_argument("--out", required=True, metavar="FILE", help="the weights file to write (.safetensors)")
    p.add_argument("--subjects", type=int, default=400, help="generated subjects (default 400)")
    p.add_argument("--clips", type=int, default=50, help="clips per subject (default 50: 20,000 maps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batches")
    p.add_argument("--jobs", type=int, default=None, help="processes generating the set (default: one per core)")
    p.add_argument("--cache-dir", default="~/.cache/epir", help="where the generated set is cached")
    p.add_argument("--no-cache", action="store_true", help="do not cache the generated set")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("compare", help="several models on the same folds and seeds: one table and figures")
    p.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="the arms, run on the same folds and seeds: a registered model (epir list models), or "
                        "MODEL@RECIPE for one of its named recipes (epir list recipes --model MODEL), so that "
                        "recipes of one model can be compared, e.g. epir epir@teacher3-mix-shared ststnet; either "
                        "followed by +LEVER for a lever of epir ablate (epir+smooth, epir@alone+tta); the first "
                        "is the reference of the paired differences")
    p.add_argument("--protocol", choices=["honest", "oracle-epoch"], default="honest",
                   help="oracle-epoch is OPTIMISTIC (epoch chosen on each held-out subject) and labelled so")
    p.add_argument("--recipe", dest="recipes", action="append", default=[], metavar="MODEL:NAME",
                   help="a named recipe for one model, e.g. htnet:cpu (default: each model's default recipe)")
    add_data_options(p)
    add_recipe_options(p, per_model=True)
    add_execution_options(p)
    p.set_defaults(dataset="synthetic", seeds=[0])
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evaluate", help="recompute the metrics of a run directory or a MEGC2019 log")
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR")
    p.add_argument("--megc-log", default=None, metavar="FILE", help="a MEGC2019 submission log")
    p.add_argument("--json", action="store_true", help="print the results.json keys as JSON")
    p.add_argument("--versus", default=None, metavar="RUN_DIR|FILE",
                   help="compare with another run (directory or MEGC2019 log) over the same samples: the difference "
                        "of UF1 and UAR and its interval, resampling subjects together (paired bootstrap)")
    p.add_argument("--resamples", type=int, default=RESAMPLES,
                   help=f"bootstrap resamples of the intervals (default {RESAMPLES})")
    p.add_argument("--level", type=float, default=LEVEL, help=f"confidence level of the intervals (default {LEVEL})")
    p.add_argument("--per-subject", action="store_true",
                   help="with --versus: each subject's accuracy under both runs, the subjects that differ most each "
                        "way, and how many subjects each run wins (sign test)")
    p.add_argument("--agreement", action="store_true",
                   help="where the runs err: the shares of samples both runs get right, only one, or neither (and "
                        "with the same wrong class), Yule's Q and the either-is-right ceiling, beside the same figures "
                        "between each run's own seeds; without --versus, between the run's seeds")
    p.add_argument("--parts", action="store_true",
                   help="a run's parts, from its fold files: the model alone and the teacher blended into its "
                        "predictions, and each member of its in-fold ensembles (train.ensemble, folds written from "
                        "round 31 on). Alone: what each part scores; with --agreement, where the parts err against "
                        "each other (model vs teacher, member k vs member 0); with --versus, each part's difference "
                        "from the other run's as well as the run's (with both, both)")
    p.add_argument("--method", choices=list(METHODS), default=METHOD,
                   help=f"how an interval is read off the resamples (default {METHOD}; bca: bias-corrected and "
                        "accelerated, which adds a jackknife over the subjects; basic: reverse percentile)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="the paper-style table (CDE and SDE columns) from finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories (epir loso --out), or compare/ablate directories holding several")
    p.add_argument("--out", default=None, help="where report.md, report.csv and report.tex go "
                                               "(default runs/report-<time>)")
    p.set_defaults(func=cmd_report)

    add_annotations(sub)

    add_preprocess(sub)

    add_inference(sub)

    p = sub.add_parser("profile", help="parameters, FLOPs per sample and CPU latency of a model")
    p.add_argument("--model", default="epir", help="a registered model, or 'all'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE")
    p.add_argument("--recipe", nargs="?", const="default", default=None, metavar="NAME",
                   help="also what one whole prediction of the model's default recipe (or of recipe NAME: epir list "
                        "recipes --model MODEL) takes: every network that predicts and each forward pass, e.g. the "
                        "test-time flip and teachers blended in (params_total, flops_total, latency_total_ms_b1)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch threads for the latencies (default 0: torch's own, one per core); 1 reads steadier "
                        "while other work holds the cores, and is what epir compare's latency column uses")
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
    except BrokenPipeError:  # the reader of the output went away (`epir list args | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented recipe
        return 141
    except OSError as e:  # the machine's, not the input's (a full disk, a folder gone mid-run): one line, not a trace
        print(f"epir {args.command}: error: {type(e).__name__}: {e}. Finished work is kept (a run's fold files); "
              "fix the cause and run the same command again.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished folds are saved; run the same command with the same --out to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

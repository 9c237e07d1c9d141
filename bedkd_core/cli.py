"""The `bedkd` command: argument parsing and printing only; the work happens in the library.

Every subcommand is registered the same way: a module's `add_command(subparsers)` adds its parser and sets
`handler`, a function of the parsed arguments that returns the exit code. `main` runs it and turns a DataError
(bad input) into one line on stderr and exit code 2; a DataWarning becomes one `bedkd: warning:` line. Option
flags are made from the typed configs' fields (`bedkd_core.options`), so `--help` and the configs cannot drift apart.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import colab_copies, grading, llm_rewrite, options, student, sweep
from .attacks import ATTACKS, AttackConfig
from .data import NUM_CLASSES, DataError, DataWarning
from .defenses import DEFENSES, get_defense

ATTACK_FIXED = ("name", "seed")
"""AttackConfig fields that are not flags: --attack names the attack, --seed is the experiment's."""
DEFENSE_FIXED = ("seed",)
"""Defense config fields that are not flags (--seed is the experiment's; each defense keeps its own seed)."""


def _add_experiment_arguments(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    parser.add_argument("--dataset", required=True,
                        help=f"{', '.join(NUM_CLASSES)} or a folder with train/dev/test files")
    parser.add_argument("--attack", required=True, help=f"one of {', '.join(ATTACKS)}")
    parser.add_argument("--scale", choices=["quick", "full"], default=None, help="default: $BEDKD_SCALE or quick")
    parser.add_argument("--model", default=None, help="hub id or local folder (default: $BEDKD_MODEL or minilm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--no-floor", action="store_true", help="skip the clean-model floor (saves one victim)")
    options.add_arguments(parser.add_argument_group("attack options (defaults: the published settings)"),
                          {"attack": AttackConfig}, skip=ATTACK_FIXED)


def attack_config(args: argparse.Namespace) -> AttackConfig:
    """The attack the command line asks for."""
    return AttackConfig(name=args.attack, **options.given(args, AttackConfig, skip=ATTACK_FIXED, what="attack"))


def _defense_classes(names) -> dict[str, type]:
    return {name: DEFENSES[name].config_cls for name in names}


def defense_options(args: argparse.Namespace, name: str, *, offered) -> dict:
    """The defense flags given for defense `name`; a flag that `name` does not take is an error naming it."""
    cls = get_defense(name).config_cls
    own = set(options.options_of(cls))
    flags = {field for other in offered for field in options.options_of(DEFENSES[other].config_cls)}
    stray = [field for field in options.given_names(args, sorted(flags - set(DEFENSE_FIXED))) if field not in own]
    if stray:
        flags_text = ", ".join("--" + field.replace("_", "-") for field in stray)
        valid = ", ".join(sorted(own - set(DEFENSE_FIXED))) or "none"
        raise DataError(f"option(s) {flags_text} do not apply to --defense {name}; its options are {valid}")
    return options.given(args, cls, skip=DEFENSE_FIXED, what=options.label(cls))


# ---------------------------------------------------------------- bedkd run

def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train (or reuse) a victim, apply a defense, evaluate, write report.json")
    _add_experiment_arguments(run, out_help="folder for report.json and artifacts")
    run.add_argument("--defense", default="none", help=f"one of {', '.join(DEFENSES)}")
    run.add_argument("--trust-pickle", action="store_true",
                     help="allow pickle weights (.bin/.pt): only for files you trust")
    options.add_arguments(run.add_argument_group("defense options (defaults: the defense's preset for the scale)"),
                          _defense_classes(n for n in DEFENSES if n != "none"), skip=DEFENSE_FIXED)
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .experiments import run_experiment

    given = defense_options(args, args.defense, offered=[n for n in DEFENSES if n != "none"])
    report = run_experiment(dataset=args.dataset, attack=attack_config(args), defense=args.defense,
                            defense_options=given, scale=args.scale, model=args.model, seed=args.seed, out=args.out,
                            with_floor=not args.no_floor, trust_pickle=args.trust_pickle)
    _print_report(report)
    print(f"report: {args.out}/report.json")
    return 0


def _print_report(report: dict) -> None:
    rows = [("victim", report["victim"])]
    if report.get("clean_floor"):
        rows.append(("clean-model floor", report["clean_floor"]))
    if report.get("defended"):
        rows.append((f"defended ({report['defense']['name']})", report["defended"]))
    print(f"\n{report['dataset']} · {report['attack']['name']} · {report['scale']} · seed {report['seed']}")
    print(f"{'model':<28}{'CACC':>8}{'ASR':>8}")
    for name, metrics in rows:
        print(f"{name:<28}{metrics.get('cacc', float('nan')):>8.3f}{metrics['asr']:>8.3f}")
    defended = report.get("defended") or {}
    if "frr" in defended:
        print(f"input filter: FRR {defended['frr']:.3f} (clean inputs rejected), FAR {defended['far']:.3f} "
              f"(triggered inputs accepted), CACC over all clean inputs {defended['cacc_all']:.3f}")
    if report.get("detection"):
        d = report["detection"]
        print(f"detection: {d['n_flagged']} flagged, precision {d['precision']:.2f}, recall {d['recall']:.3f}")


# ---------------------------------------------------------------- bedkd defend

def _add_defend(sub) -> None:
    defend = sub.add_parser("defend", help="defend a model you bring (HF folder with safetensors) with BeDKD")
    defend.add_argument("--victim", required=True)
    defend.add_argument("--clean", required=True, help="your clean labelled file (.jsonl/.csv/.tsv)")
    defend.add_argument("--suspect", required=True, help="the unverified training file")
    defend.add_argument("--out", required=True)
    defend.add_argument("--trust-pickle", action="store_true")
    options.add_arguments(defend.add_argument_group("BeDKD options (defaults: the preset's)"),
                          _defense_classes(["bedkd"]), skip=DEFENSE_FIXED)
    defend.set_defaults(handler=_defend)


def _defend(args: argparse.Namespace) -> int:
    from .experiments import defend_own_model

    summary = defend_own_model(victim=args.victim, clean=args.clean, suspect=args.suspect, out=args.out,
                               options=defense_options(args, "bedkd", offered=["bedkd"]),
                               trust_pickle=args.trust_pickle)
    print(f"identified {summary['n_identified']} suspect samples; purified model: {args.out}/purified_model")
    return 0


# ---------------------------------------------------------------- bedkd compare

def _add_compare(sub) -> None:
    from .compare import __doc__ as compare_doc

    parser = sub.add_parser("compare", help="run several defenses on one cached victim; write one table",
                            description=compare_doc.split("\n\n")[0])
    _add_experiment_arguments(parser, out_help="folder for compare.csv, compare.json, compare.md")
    parser.add_argument("--defenses", required=True, help=f"comma-separated, from: {', '.join(DEFENSES)}")
    parser.add_argument("--set", action="append", default=None, metavar="DEFENSE.FIELD=VALUE",
                        help="override one defense option, e.g. strip.repeat=10 (repeatable)")
    parser.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    """0, or 1 if a defense failed (its traceback above)."""
    from .compare import compare, parse_defenses, parse_settings, to_markdown

    names = parse_defenses(args.defenses)
    table = compare(dataset=args.dataset, attack=attack_config(args), defenses=names, scale=args.scale,
                    model=args.model, seed=args.seed, out=args.out, options=parse_settings(args.set, names),
                    with_floor=not args.no_floor)
    print()
    print(to_markdown(table))
    print(f"tables: {args.out}/compare.{{csv,json,md}}")
    failed = [r["defense"] for r in table["rows"] if str(r["status"]).startswith("failed")]
    if failed:
        print(f"bedkd: error: defense(s) failed: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- bedkd headline, bedkd download

def _add_headline(sub) -> None:
    headline = sub.add_parser("headline", help="the headline over finished full-scale cells, from results/")
    headline.add_argument("--readme", default=None, help="also rewrite the headline block of this README.md")
    headline.set_defaults(handler=_headline)


def _headline(args: argparse.Namespace) -> int:
    from . import book

    print(book.headline_markdown())
    if args.readme:
        changed = book.write_readme_headline(Path(args.readme))
        print(f"{args.readme}: headline {'updated' if changed else 'already up to date'}")
    return 0


def _add_download(sub) -> None:
    download = sub.add_parser("download", help="fetch the datasets from their public sources and verify sha256")
    download.add_argument("--to", default=None)
    download.add_argument("--dataset", action="append", default=None)
    download.add_argument("--force", action="store_true")
    download.set_defaults(handler=_download)


def _download(args: argparse.Namespace) -> int:
    from .download import main as download_main

    return download_main((["--to", args.to] if args.to else [])
                         + sum((["--dataset", d] for d in args.dataset or []), [])
                         + (["--force"] if args.force else []))


COMMANDS = (_add_run, _add_defend, _add_compare, sweep.add_command, grading.add_command, grading.add_assign_command,
            student.add_command,
            colab_copies.add_command, llm_rewrite.add_command, _add_headline, _add_download)
"""Every subcommand's `add_command`, in the order `bedkd --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bedkd",
                                     description="Backdoor attacks on text classifiers and the BeDKD defense.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        warnings.showwarning = _show_warning(warnings.showwarning)
        try:
            return args.handler(args)
        except DataError as err:
            print(f"bedkd: error: {err}", file=sys.stderr)
            return 2


def _show_warning(fallback):
    """Print a DataWarning as one `bedkd: warning:` line on stderr; hand any other warning to `fallback`."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"bedkd: warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)
    return show


if __name__ == "__main__":
    sys.exit(main())

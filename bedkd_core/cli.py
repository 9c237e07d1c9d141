"""The `bedkd` command: argument parsing and printing only; the work happens in `experiments`."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from . import compare, grading, student, sweep
from .attacks import ATTACKS, AttackConfig
from .data import NUM_CLASSES, DataError
from .defenses import BASELINES, DEFENSES, cli_options, options_for
from .defenses.bedkd import PRESETS, BeDKDConfig

BEDKD_OPTIONS = {  # CLI flag → (config field, type)
    "--preset": ("preset", str),
    "--clean-per-class": ("clean_per_class", int),
    "--dmm-per-class": ("dmm_per_class", int),
    "--n-poison": ("n_poison", int),
    "--tau": ("tau", float),
    "--dmm-epochs": ("dmm_epochs", int),
    "--akd-epochs": ("akd_epochs", int),
    "--temperature-dmm": ("temperature_dmm", float),
    "--temperature-akd": ("temperature_akd", float),
    "--alpha": ("alpha", float),
    "--kl-weight": ("kl_weight", float),
    "--hidden-weight": ("hidden_weight", float),
    "--identify": ("identify", str),
    "--max-candidates": ("max_candidates", int),
    "--scan": ("scan", str),
    "--refine": ("refine", str),
    "--punish-bound": ("punish_bound", float),
    "--holdout": ("holdout", int),
    "--dev-tolerance": ("dev_tolerance", float),
    "--learning-rate": ("learning_rate", float),
    "--batching": ("batching", str),
    "--curve-every": ("curve_every", int),
}
BEDKD_SWITCHES = {  # CLI flag → config field it turns off
    "--no-infer-target": "infer_target",
    "--no-mask-padding": "mask_padding",
    "--no-punish-bound": "punish_bound",
}


def _add_bedkd_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("BeDKD options (defaults: the preset's; see `bedkd_core.defenses.bedkd`)")
    for flag, (field, kind) in BEDKD_OPTIONS.items():
        default = next(f.default for f in dataclasses.fields(BeDKDConfig) if f.name == field)
        extra = f"; presets: {', '.join(PRESETS)}" if field == "preset" else ""
        group.add_argument(flag, dest=field, type=kind, default=None, help=f"default {default}{extra}")
    for flag, field in BEDKD_SWITCHES.items():
        group.add_argument(flag, dest=f"off_{field}", action="store_true", help=f"turn off {field}")


def _add_baseline_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("baseline defense options (defaults: the defense's, by scale)")
    taken = {field for field, _ in BEDKD_OPTIONS.values()}
    for flag, field, kind, help_text, users in cli_options():
        if field not in taken:
            group.add_argument(flag, dest=field, type=kind, default=None, help=f"{help_text} ({', '.join(users)})")


def _baseline_options(args, name: str) -> dict:
    fields = {field for _, field, _, _, _ in cli_options()}
    return options_for(name, {field: getattr(args, field, None) for field in fields})


def _bedkd_options(args) -> dict:
    options = {field: getattr(args, field) for field, _ in BEDKD_OPTIONS.values() if getattr(args, field) is not None}
    for field in BEDKD_SWITCHES.values():
        if getattr(args, f"off_{field}"):
            options[field] = None if field == "punish_bound" else False
    return options


def _words(text: str) -> tuple[str, ...]:
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:
        raise argparse.ArgumentTypeError("give at least one word, comma-separated: w1,w2")
    return words


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bedkd", description="Backdoor attacks on text classifiers and the BeDKD defense.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train (or reuse) a victim, apply a defense, evaluate, write report.json")
    run.add_argument("--dataset", required=True, help=f"{', '.join(NUM_CLASSES)} or a folder with train/dev/test files")
    run.add_argument("--attack", required=True, help=f"one of {', '.join(ATTACKS)}")
    run.add_argument("--defense", default="none", help=f"one of {', '.join(DEFENSES)}")
    run.add_argument("--scale", choices=["quick", "full"], default=None, help="default: $BEDKD_SCALE or quick")
    run.add_argument("--model", default=None, help="hub id or local folder (default: $BEDKD_MODEL or minilm)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, help="folder for report.json and artifacts")
    run.add_argument("--no-floor", action="store_true", help="skip the clean-model floor (saves one victim)")
    run.add_argument("--trust-pickle", action="store_true", help="allow pickle weights (.bin/.pt): only for files you trust")
    attack = run.add_argument_group("attack options (defaults: the published settings)")
    attack.add_argument("--poison-rate", type=float, default=None)
    attack.add_argument("--target-label", type=int, default=None)
    attack.add_argument("--label-mode", choices=["dirty", "clean"], default="dirty")
    attack.add_argument("--triggers", type=_words, default=AttackConfig.triggers, help="BadNets words: w1,w2,...")
    attack.add_argument("--num-insertions", type=int, default=1)
    attack.add_argument("--trigger-sentence", default=AttackConfig.trigger_sentence)
    attack.add_argument("--sos-triggers", type=_words, default=AttackConfig.sos_triggers)
    attack.add_argument("--negative-rate", type=float, default=AttackConfig.negative_rate)
    attack.add_argument("--poison-dir", default=None, help="--attack file: folder with train.jsonl, test_poisoned.jsonl")
    _add_bedkd_options(run)
    _add_baseline_options(run)

    defend = sub.add_parser("defend", help="defend a model you bring (HF folder with safetensors) with BeDKD")
    defend.add_argument("--victim", required=True)
    defend.add_argument("--clean", required=True, help="your clean labelled file (.jsonl/.csv/.tsv)")
    defend.add_argument("--suspect", required=True, help="the unverified training file")
    defend.add_argument("--out", required=True)
    defend.add_argument("--trust-pickle", action="store_true")
    _add_bedkd_options(defend)

    grading.add_command(sub)  # bedkd grade NOTEBOOK [--json]
    student.add_command(sub)  # bedkd student-copies [--out DIR] [--root BOOK] [--check]

    compare.add_parser(sub)  # bedkd compare --dataset D --attack A --defenses bedkd,finetune,... --out DIR
    sweep.add_parser(sub)  # bedkd sweep --grid NAME --out results/ [--status] [--backend ray] ...

    headline = sub.add_parser("headline", help="the headline over finished full-scale cells, from results/")
    headline.add_argument("--readme", default=None, help="also rewrite the headline block of this README.md")

    download = sub.add_parser("download", help="fetch the datasets from their public sources and verify sha256")
    download.add_argument("--to", default=None)
    download.add_argument("--dataset", action="append", default=None)
    download.add_argument("--force", action="store_true")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "handler", None):  # a subcommand module's run_command (the add_command convention)
        try:
            return args.handler(args)
        except DataError as err:
            print(f"bedkd: error: {err}", file=sys.stderr)
            return 2
    if args.command == "sweep":
        return sweep.main(args)  # handles its own errors and exit codes
    if args.command == "compare":
        return compare.main_args(args)
    try:
        if args.command == "run":
            from .experiments import run_experiment

            config = AttackConfig(name=args.attack, poison_rate=args.poison_rate, target_label=args.target_label,
                                  label_mode=args.label_mode, triggers=args.triggers, num_insertions=args.num_insertions,
                                  trigger_sentence=args.trigger_sentence, sos_triggers=args.sos_triggers,
                                  negative_rate=args.negative_rate, poison_dir=args.poison_dir)
            options = _bedkd_options(args)
            if args.defense in BASELINES:
                baseline = _baseline_options(args, args.defense)
                stray = sorted(set(options) - set(baseline))
                if stray:
                    raise DataError(f"BeDKD options ({', '.join(stray)}) were given but --defense is {args.defense}")
                options = baseline
            elif options and args.defense != "bedkd":
                raise DataError(f"BeDKD options ({', '.join(options)}) were given but --defense is {args.defense}")
            report = run_experiment(dataset=args.dataset, attack=config, defense=args.defense, defense_options=options,
                                    scale=args.scale, model=args.model, seed=args.seed, out=args.out,
                                    with_floor=not args.no_floor, trust_pickle=args.trust_pickle)
            _print_report(report)
            print(f"report: {args.out}/report.json")
        elif args.command == "defend":
            from .experiments import defend_own_model

            summary = defend_own_model(victim=args.victim, clean=args.clean, suspect=args.suspect, out=args.out,
                                       options=_bedkd_options(args), trust_pickle=args.trust_pickle)
            print(f"identified {summary['n_identified']} suspect samples; purified model: {args.out}/purified_model")
        elif args.command == "headline":
            from . import book

            print(book.headline_markdown())
            if args.readme:
                from pathlib import Path

                changed = book.write_readme_headline(Path(args.readme))
                print(f"{args.readme}: headline {'updated' if changed else 'already up to date'}")
        elif args.command == "download":
            from .download import main as download_main

            return download_main(
                (["--to", args.to] if args.to else []) + sum((["--dataset", d] for d in args.dataset or []), [])
                + (["--force"] if args.force else [])
            )
    except DataError as err:
        print(f"bedkd: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

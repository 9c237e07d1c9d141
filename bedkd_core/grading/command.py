"""`bedkd grade` and `bedkd assign` (also `python -m bedkd_core.grading`, which is `bedkd grade`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = ("Grade submissions (a notebook or every .ipynb in a folder) against a chapter's autograder, "
               "made by `bedkd assign`. Each submission's code runs in its own sandboxed process with time "
               "and memory limits; the tests and the reference run only in the grader. Exit status 0 when "
               "grading ran, whatever the scores; 2 on unreadable input or a missing autograder.")


def add_command(subparsers) -> None:
    """Register `grade` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("grade", help="grade notebooks (or a class folder) into a CSV",
                                   description=DESCRIPTION)
    _add_arguments(parser)
    parser.set_defaults(handler=run_command)


def add_assign_command(subparsers) -> None:
    """Register `assign` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("assign", help="run otter assign on the assignment masters",
                                   description="Run `otter assign` on assignments/chNN_*.ipynb into dist/chNN/ "
                                               "and write the student copies to assignments/student/.")
    parser.add_argument("--chapter", type=int, action="append", default=None, help="only this chapter (repeatable)")
    parser.add_argument("--dist", type=Path, default=None, help="where the autograders go (default: dist/)")
    parser.add_argument("--check", action="store_true", help="only say whether the student copies are up to date")
    parser.set_defaults(handler=run_assign)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", nargs="+", help="a notebook, or a folder of them (a class)")
    parser.add_argument("--chapter", type=int, required=True, help="the chapter whose assignment is graded")
    parser.add_argument("--dist", type=Path, default=None, help="where `bedkd assign` wrote the autograders")
    parser.add_argument("--csv", type=Path, default=None, help="write one row per submission here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per call (default 60)")
    parser.add_argument("--memory-mb", type=int, default=4096, help="memory of the student's process (MiB)")


def run_command(args: argparse.Namespace) -> int:
    """Grade; print a table (or JSON); write the CSV. A DataError is one line on stderr and exit 2."""
    from ..data import DataError
    from .grader import DIST, grade_all, write_csv
    from .runner import Limits

    try:
        results = grade_all(args.submissions, chapter=args.chapter, dist=args.dist or DIST,
                            limits=Limits(time_s=args.time_limit, memory_mb=args.memory_mb))
    except DataError as err:
        print(f"bedkd grade: error: {err}", file=sys.stderr)
        return 2
    if args.csv:
        write_csv(results, args.csv)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.file}: {r.total:g}/{r.max_points:g}  {r.status}")
            for q in r.questions:
                print(f"  {q.name:<24}{q.points:>5g}/{q.max_points:<4g}{q.status:<16}{q.feedback}")
    if args.csv:
        print(f"grades: {args.csv}")
    return 0


def run_assign(args: argparse.Namespace) -> int:
    from .assign import assign, stale

    if args.check:
        problems = stale(chapters=args.chapter)
        for line in problems:
            print(line)
        if problems:
            print("run `bedkd assign` and commit assignments/student/", file=sys.stderr)
        return 1 if problems else 0
    for path in assign(chapters=args.chapter, **({"dist": args.dist} if args.dist else {})):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedkd grade", description=DESCRIPTION)
    _add_arguments(parser)
    return run_command(parser.parse_args(argv))

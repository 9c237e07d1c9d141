"""`bedkd grade NOTEBOOK [--json]` (also `python -m bedkd_core.grading`): grade, print the table or JSON."""
from __future__ import annotations

import argparse
import json
import sys

from .notebook import NotebookError, grade_notebook

DESCRIPTION = ("Autograde the notebook's graded assignments (code cells tagged assignment:<name>) on real data "
               "against the reference implementations in bedkd_core. Exit status 0 when grading ran, whatever "
               "the score; 2 when the notebook cannot be read.")


def add_command(subparsers) -> None:
    """Register `grade` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("grade", help="autograde a notebook's assignment cells against bedkd_core",
                                   description=DESCRIPTION)
    _add_arguments(parser)
    parser.set_defaults(handler=run_command)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the .ipynb to grade (a chapter or its student copy)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_command(args: argparse.Namespace) -> int:
    """Grade `args.notebook`; print the table (or JSON). 0 when grading ran, 2 when the notebook is unreadable.

    An unreadable notebook or grading data is reported here as `bedkd grade: error: …`, not raised."""
    from ..data import DataError

    try:
        report = grade_notebook(args.notebook)
    except NotebookError as err:
        print(f"bedkd grade: error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"bedkd grade: error: the grading data could not be loaded: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedkd grade", description=DESCRIPTION)
    _add_arguments(parser)
    return run_command(parser.parse_args(argv))

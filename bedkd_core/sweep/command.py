"""`bedkd sweep`: the subcommand's arguments (`add_command`) and what it does with them (`run_command`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import store
from .grid import GRIDS_DIR, load_grid
from .runner import run_sweep
from .status import _effective_scale, format_status, sweep_status


def add_command(subparsers) -> None:
    """Add `bedkd sweep` to the `bedkd` subcommands."""
    names = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))) or "none found"
    parser = subparsers.add_parser(
        "sweep", help="run every cell of a grid of experiments (resumable), or show where each cell stands",
        description="Run the cells of a grid file that are not finished; rerun the same command to resume or to "
                    "retry failed cells. Results: OUT/<grid>/<dataset>/<attack>/<defense>/seed<N>/report.json.")
    parser.add_argument("--grid", required=True, help=f"a grid in grids/ ({names}) or a YAML file")
    parser.add_argument("--out", default=None, help="results root (default: $BEDKD_RESULTS or results/ in the repo)")
    parser.add_argument("--scale", choices=["quick", "full"], default=None,
                        help="default: the grid's scale, else $BEDKD_SCALE, else quick")
    parser.add_argument("--model", default=None, help="hub id or local folder (default: $BEDKD_MODEL or minilm)")
    parser.add_argument("--status", action="store_true", help="show each cell's state (done, failed, not yet run...)"
                                                              " and run nothing")
    parser.add_argument("--backend", choices=["sequential", "pool", "ray"], default="sequential",
                        help="pool: cells in --workers processes of this machine (e.g. sharing one GPU); ray: "
                             "cells as Ray tasks (pip install 'bedkd_core[ray]'; $RAY_ADDRESS or local)")
    parser.add_argument("--workers", type=int, default=1, help="cells at once (pool and ray backends)")
    parser.add_argument("--only", action="append", default=None, metavar="PATTERN",
                        help="only cells matching dataset/attack/defense/seedN globs, or any one part "
                             "(e.g. 'sst2/badnets/*' or 'bedkd-*'); repeatable")
    parser.add_argument("--limit", type=int, default=None, help="run at most N cells this time")
    parser.add_argument("--optional", action="store_true", help="also run the grid's optional cells")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    parser.add_argument("--rerun-mismatched", action="store_true",
                        help="also rerun cells finished with other settings (status: mismatch)")
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """0 when every cell tried finished, 1 when some failed, 130 when interrupted; a bad grid or bad arguments
    raise DataError (`bedkd` prints it and exits 2)."""
    try:
        out = Path(args.out) if args.out else store.RESULTS_DIR
        grid = load_grid(args.grid, scale=args.scale)
        if args.status:
            scale = _effective_scale(grid, args.scale)
            print(format_status(grid, sweep_status(grid, out, scale=scale, model=args.model, only=args.only),
                                scale=scale, out=out))
            return 0
        result = run_sweep(grid, out, scale=args.scale, model=args.model, backend=args.backend,
                           workers=args.workers, only=args.only, limit=args.limit, include_optional=args.optional,
                           fail_fast=args.fail_fast, rerun_mismatched=args.rerun_mismatched)
    except KeyboardInterrupt:
        print("bedkd sweep: interrupted; the cell that was running is not finished: run the same command to "
              "resume", file=sys.stderr)
        return 130
    return 1 if result.failed else 0

"""Cells per minute of a sweep in N worker processes against one worker, side by side in one call.

The same grid runs twice into fresh results folders, each with its own empty model cache, so both train every
victim: first sequentially (one process with all the CPU threads), then with `--backend pool --workers N`
(the threads shared out). On a lent GPU both runs share the one device. Writes the ratio with provenance:

    python benchmarks/bench_sweep_pool.py --workers 8 --json results/benchmarks/sweep-pool.json
    python benchmarks/bench_sweep_pool.py --workers 2 --grid grids/beyond-rate.yaml --only 'sst2/badnets-r0.1/*'

The default grid is small (SST-2 × BadNets, AddSent × none, BeDKD, fine-tuning at quick scale); `--scale full`
on a GPU measures the campaign's own cells.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

DEFAULT_GRID = """\
name: pool-bench
scale: quick
seeds: [0]
with_floor: true
datasets: [sst2]
attacks: [badnets, addsent]
defenses:
  - none
  - {label: bedkd-fixed, name: bedkd}
  - {label: finetune, name: finetune}
"""


def timed_sweep(*, grid: Path, out: Path, cache: Path, backend: str, workers: int, scale: str | None,
                only: list[str] | None) -> dict:
    """Wall seconds and finished cells of one sweep into `out` with the model cache in `cache`."""
    from bedkd_core.sweep import run_sweep

    os.environ["BEDKD_CACHE"] = str(cache)  # inherited by the pool's workers, which start after this
    start = time.perf_counter()
    result = run_sweep(grid, out, scale=scale, backend=backend, workers=workers, only=only, progress=False)
    seconds = time.perf_counter() - start
    done = [o for o in result.outcomes if o["state"] == "done"]
    if len(done) != len(result.outcomes) or not done:
        raise SystemExit(f"{backend}: {len(result.outcomes) - len(done)} of {len(result.outcomes)} cells did not "
                         "finish; see the error.json files under " + str(out))
    return {"backend": backend, "workers": workers, "cells": len(done), "seconds": round(seconds, 1),
            "cells_per_minute": round(60 * len(done) / seconds, 3),
            "cell_seconds": {o["cell"]: round(o["seconds"], 1) for o in done}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, required=True, help="processes of the pool run (≥ 2)")
    parser.add_argument("--grid", type=Path, default=None, help="a grid file (default: a small SST-2 grid)")
    parser.add_argument("--only", action="append", default=None, help="cell patterns, as bedkd sweep --only")
    parser.add_argument("--scale", choices=["quick", "full"], default=None)
    parser.add_argument("--work", type=Path, default=None, help="folder for both runs' results and caches")
    parser.add_argument("--json", type=Path, default=None, help="write the measurement here")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2: the pool is measured against one worker")
    from bedkd_core.store import provenance, write_json_atomic

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pool-"))
    grid = args.grid
    if grid is None:
        grid = work / "pool-bench.yaml"
        grid.write_text(DEFAULT_GRID)
    runs = [timed_sweep(grid=grid, out=work / f"{backend}-results", cache=work / f"{backend}-cache",
                        backend=backend, workers=workers, scale=args.scale, only=args.only)
            for backend, workers in (("sequential", 1), ("pool", args.workers))]
    ratio = runs[1]["cells_per_minute"] / runs[0]["cells_per_minute"]
    report = {"benchmark": "bench_sweep_pool", "grid": grid.read_text() if args.grid is None else str(args.grid),
              "only": args.only, "scale": args.scale, "runs": runs, "speedup": round(ratio, 2),
              "threads": os.cpu_count(), "provenance": provenance()}
    print(f"sequential: {runs[0]['cells']} cells in {runs[0]['seconds']} s; pool of {args.workers}: "
          f"{runs[1]['cells']} cells in {runs[1]['seconds']} s; {ratio:.2f}x the cells per minute")
    if args.json:
        write_json_atomic(args.json, report)
        print(json.dumps({k: report[k] for k in ("speedup", "threads")}), "→", args.json)


if __name__ == "__main__":
    main()

"""The quick book build against its 10-minute budget: `jupyter-book build` timed cold and warm, side by side.

Cold: an empty victim cache, so the chapters train every quick victim they use. Warm: the same build again,
reusing the victims the cold build cached (what a reader's second build, and CI after the tests, see).
Prints both wall times, their ratio and each against the budget; with --json, writes them with provenance.

    python benchmarks/bench_book.py [--budget-min 10] [--json results/benchmarks/book.json]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bedkd_core.store import provenance, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent


def build(cache: Path, output: Path) -> float:
    """Seconds for one quick `jupyter-book build -W --keep-going` of this checkout (raises if it fails)."""
    env = {**os.environ, "BEDKD_SCALE": "quick", "BEDKD_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    start = time.perf_counter()
    done = subprocess.run([jupyter_book, "build", "-W", "--keep-going", "--path-output", output, REPO_ROOT],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the book build failed (exit {done.returncode}); its output ends with:\n"
                         f"{(done.stdout + done.stderr)[-6000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="write the timings with provenance to this file")
    args = parser.parse_args()
    subprocess.run(["bash", REPO_ROOT / ".ci" / "vendor_widgets.sh"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="bench-book-") as scratch:
        cache, start_info = Path(scratch) / "cache", provenance()
        cold = build(cache, Path(scratch) / "cold")
        warm = build(cache, Path(scratch) / "warm")
    budget = args.budget_min * 60
    print(f"quick book build, cold victim cache: {cold:7.1f} s ({cold / budget:.2f} x the {args.budget_min:g}-min budget)")
    print(f"quick book build, warm victim cache: {warm:7.1f} s ({warm / budget:.2f} x the budget)")
    print(f"cold / warm: {cold / warm:.2f}")
    if args.json:
        write_json_atomic(args.json, {"cold_seconds": round(cold, 1), "warm_seconds": round(warm, 1),
                                      "budget_seconds": budget, "cpu_count": os.cpu_count(),
                                      "provenance": start_info})


if __name__ == "__main__":
    main()

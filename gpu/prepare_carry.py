"""Fill `carry/` (git-ignored) with what a sweep needs on a lent GPU machine that can download nothing.

    .venv/bin/python gpu/prepare_carry.py --datasets sst2 olid
    .venv/bin/python gpu/prepare_carry.py --datasets sst2/clean agnews/clean   # BadNets/AddSent/SOS need no pools

carry/minilm-fp16  the packaged MiniLM with its weights stored as fp16 (45 MB; loaded back in fp32)
carry/data/<name>  the datasets' files (or one subfolder), copied from $BEDKD_DATA or ../shared/data
carry/wheels       `datasets` and the two packages it needs that the GPU image lacks, at this venv's versions
The device tool carries at most 64 MiB with the working tree; this script refuses to build more than that.
Then run gpu/sweep.sh there (see its header).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

from bedkd_core.data import data_root
from bedkd_core.models import resolve_model, save_half_precision_copy

REPO_ROOT = Path(__file__).resolve().parent.parent
CARRY = REPO_ROOT / "carry"
WHEELS = ("datasets", "dill", "multiprocess")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 64


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sst2", "olid"],
                        help="dataset folders, or subfolders such as olid/clean, to carry")
    parser.add_argument("--python-version", default="3.12",
                        help="the Python the wheels are for: the device image's (3.12); this machine's "
                             f"({sys.version_info.major}.{sys.version_info.minor}) to rehearse gpu/sweep.sh here")
    args = parser.parse_args()
    if CARRY.exists():
        shutil.rmtree(CARRY)
    save_half_precision_copy(source=resolve_model("minilm"), folder=CARRY / "minilm-fp16")
    for name in args.datasets:
        shutil.copytree(data_root() / name, CARRY / "data" / name)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", args.python_version, "--implementation", "cp", *platforms, "-d", str(CARRY / "wheels"),
                    *pins], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    tree_mib = sum((REPO_ROOT / f).stat().st_size for f in tracked.decode().split("\0") if f) / 2**20
    total = folder_mib(CARRY) + tree_mib
    print(f"carry/: {folder_mib(CARRY):.1f} MiB + tracked tree {tree_mib:.1f} MiB = {total:.1f} MiB "
          f"(limit {LIMIT_MIB}); wheels: {', '.join(pins)}")
    if total > LIMIT_MIB:
        sys.exit(f"over the device tool's {LIMIT_MIB} MiB: carry fewer datasets (the tracked tree travels too)")


if __name__ == "__main__":
    main()

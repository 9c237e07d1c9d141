"""Fetch the built-in datasets from the attack authors' GitHub repositories and convert them to JSONL.

`bedkd download` runs `main`. Every source URL is pinned to a commit in data/manifest.json, and every
converted file must match the manifest's sha256 before it is written.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .data import NUM_CLASSES, DataError, load_manifest, sha256_of
from .store import REPO_ROOT, atomic_file

DEFAULT_DIR = REPO_ROOT / "data"
TIMEOUT_S = 60
FIX = (
    "copy the data from a machine that has it (a folder laid out like ../shared/data, "
    "with sst2/, olid/ and agnews/) or set BEDKD_DATA to such a folder"
)


def fetch_url(url: str) -> bytes:
    """The bytes at `url` (plain HTTPS GET with a timeout)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.read()


def _normalize(text: str) -> str:
    return " ".join(text.replace('"', "").split())


def _bad(entry: dict, problem: str) -> DataError:
    return DataError(
        f"{entry['file']}: the source {entry['url']} is malformed ({problem}); "
        f"run `bedkd download --force` again, or {FIX}"
    )


def convert(raw: bytes, *, entry: dict, root: Path) -> bytes:
    """Turn a source TSV into the JSONL bytes of `entry` (see data/README.md for the rules).

    `root` holds the files that `entry["derive"]` refers to (the clean train split for `poisoned`).
    """
    derive = entry["derive"]
    clean = None
    if "poisoned" in derive:
        clean_path = root / derive["poisoned"]
        if not clean_path.is_file():
            dataset = entry["file"].split("/")[0]
            raise DataError(f"{entry['file']}: needs {clean_path} first; run `bedkd download --dataset {dataset}`")
        with clean_path.open(encoding="utf-8") as handle:
            clean = {_normalize(json.loads(line)["text"]) for line in handle}
    try:
        lines = raw.decode("utf-8").split("\n")[1:]  # the first line is the header
    except UnicodeDecodeError as err:
        raise _bad(entry, f"not UTF-8 text ({err})") from None
    out = []
    src_idx = 0
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise _bad(entry, f"line {number} has {len(fields) - 1} tabs, expected one")
        text = fields[0].strip()
        try:
            row = {"text": text, "label": int(fields[1].strip())}
        except ValueError:
            raise _bad(entry, f"line {number}: label {fields[1].strip()!r} is not an integer") from None
        if clean is not None:
            row["poisoned"] = int(_normalize(text) not in clean)
        if "src_idx" in derive:
            row["src_idx"] = src_idx
        src_idx += 1
        if text or not derive.get("drop_empty"):
            out.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(out).encode("utf-8")


def _write_atomically(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def download(
    *,
    to: Path,
    datasets: list[str] | None = None,
    force: bool = False,
    fetch: Callable[[str], bytes] | None = None,
) -> list[Path]:
    """Download and convert the manifest's files into `to`; return the files written.

    `datasets` picks some of sst2, olid, agnews (default all). Files already in `to` with the right
    sha256 are kept and not listed, unless `force`. Each file is checked and written atomically, so a
    failure leaves no partial file and keeps the files done before it.
    """
    to = Path(to)
    fetch = fetch or fetch_url
    wanted = list(NUM_CLASSES) if datasets is None else list(datasets)
    unknown = sorted(set(wanted) - set(NUM_CLASSES))
    if unknown:
        raise DataError(f"unknown dataset(s) {', '.join(unknown)}: use some of {', '.join(NUM_CLASSES)}")
    written = []
    for entry in load_manifest():
        if entry["file"].split("/")[0] not in wanted:
            continue
        path = to / entry["file"]
        if not force and path.is_file() and sha256_of(path) == entry["sha256"]:
            continue
        try:
            raw = fetch(entry["url"])
        except (OSError, http.client.HTTPException) as err:
            raise DataError(f"{entry['file']}: could not reach {entry['url']}: {err}; {FIX}") from err
        data = convert(raw, entry=entry, root=to)
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise DataError(
                f"{entry['file']}: the converted download has sha256 {digest}, the manifest expects "
                f"{entry['sha256']} (source {entry['url']} changed or the transfer was corrupted); "
                f"nothing was written for it. Run `bedkd download --force` again, or {FIX}"
            )
        _write_atomically(path, data)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """`bedkd download [--to DIR] [--dataset sst2 ...] [--force]`."""
    parser = argparse.ArgumentParser(
        prog="bedkd download", description="Download the built-in datasets and check them against data/manifest.json."
    )
    parser.add_argument("--to", type=Path, default=DEFAULT_DIR, help=f"target folder (default {DEFAULT_DIR})")
    parser.add_argument(
        "--dataset", action="append", choices=list(NUM_CLASSES), help="only this dataset (repeatable; default all)"
    )
    parser.add_argument("--force", action="store_true", help="download again even files that are already correct")
    args = parser.parse_args(argv)
    try:
        written = download(to=args.to, datasets=args.dataset, force=args.force)
    except DataError as err:
        print(f"bedkd download: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} file(s) written to {args.to}; the others were already correct.")
    return 0

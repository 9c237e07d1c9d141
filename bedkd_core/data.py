"""Find the data root, load and validate splits and poison pools, read bring-your-own files.

Introduced in chapter 2 (backdoored classifiers); every later chapter loads data through it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from .store import REPO_ROOT

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.json"  # a link to data/manifest.json

NUM_CLASSES = {"sst2": 2, "olid": 2, "agnews": 4}
"""The built-in datasets and their number of classes."""

LABEL_NAMES = {
    "sst2": ["negative", "positive"],
    "olid": ["not offensive", "offensive"],
    "agnews": ["World", "Sports", "Business", "Sci/Tech"],
}
SPLITS = ("train", "dev", "test")
KINDS = ("clean", "syntactic_p20", "syntactic_pool", "style_bible_pool")
TABLE_SUFFIXES = (".jsonl", ".csv", ".tsv")


class DataError(ValueError):
    """Bad or missing data; the message names the problem and the fix."""


def _candidate_roots() -> list[Path]:
    roots = []
    if os.environ.get("BEDKD_DATA"):
        roots.append(Path(os.environ["BEDKD_DATA"]).expanduser())
    roots.append(REPO_ROOT / "data")
    roots.append(REPO_ROOT.parent / "shared" / "data")
    for parent in [Path.cwd(), *Path.cwd().parents]:
        roots.append(parent / "shared" / "data")
    return list(dict.fromkeys(roots))


def data_root() -> Path:
    """The first folder holding the built-in datasets: $BEDKD_DATA, the repo's data/, then ../shared/data."""
    if os.environ.get("BEDKD_DATA"):
        root = Path(os.environ["BEDKD_DATA"]).expanduser()
        if not (root / "sst2" / "clean").is_dir():
            raise DataError(
                f"BEDKD_DATA={root} does not hold the datasets (no {root / 'sst2' / 'clean'}). "
                "Point it at a folder laid out like ../shared/data, or run `bedkd download --to DIR`."
            )
        return root
    candidates = _candidate_roots()
    for root in candidates:
        if (root / "sst2" / "clean").is_dir():
            return root
    looked = ", ".join(str(r) for r in candidates)
    raise DataError(
        f"data not found: looked in {looked}. Run `bedkd download` (needs internet) "
        "or set BEDKD_DATA to a folder holding sst2/, olid/ and agnews/."
    )


@dataclass(frozen=True)
class Splits:
    """Train, dev and test splits of one task, each a Dataset with `text` and `label`."""

    name: str
    num_classes: int
    train: Dataset
    dev: Dataset
    test: Dataset


def read_table(path: str | Path, *, num_classes: int | None = None) -> Dataset:
    """Read a JSONL, CSV or TSV file with `text` and `label` into a Dataset (other columns are kept).

    Errors name the file and line: malformed rows, missing fields, empty texts, labels outside 0..K-1.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = list(_iter_rows(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    for line, row in rows:
        if "text" not in row or "label" not in row:
            raise DataError(f"{path}:{line}: needs fields `text` and `label`, found {sorted(row)}")
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError(f"{path}:{line}: empty text")
        row["label"] = _integer_label(row["label"], where=f"{path}:{line}")
        if row["label"] < 0 or (num_classes is not None and row["label"] >= num_classes):
            allowed = f"0..{num_classes - 1}" if num_classes is not None else "0..K-1 (K classes)"
            raise DataError(f"{path}:{line}: label {row['label']} is outside {allowed}; labels must be integers 0..K-1")
    keys = list(rows[0][1])
    return Dataset.from_dict({k: [row.get(k) for _, row in rows] for k in keys})


def _integer_label(value, *, where: str) -> int:
    """`value` as an int: integers and their spellings ("1", 1.0) pass; 1.5, "pos" or a missing value do not."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not number.is_integer():
        raise DataError(f"{where}: label {value!r} is not an integer; labels must be integers 0..K-1")
    return int(number)


def _iter_rows(path: Path):
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for line, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{line}: malformed JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line}: expected a JSON object per line")
                yield line, row
    elif path.suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more fields than the header names")
                yield reader.line_num, dict(row)
    else:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(TABLE_SUFFIXES)}")


def _find_split_file(folder: Path, split: str) -> Path:
    for suffix in TABLE_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    raise DataError(f"{folder}: no {split}.jsonl, {split}.csv or {split}.tsv")


def load_task(name: str) -> Splits:
    """Clean train/dev/test of a built-in dataset (`sst2`, `olid`, `agnews`) or of a folder of your own."""
    if name in NUM_CLASSES:
        folder = data_root() / name / "clean"
        num_classes = NUM_CLASSES[name]
        tables = {split: read_table(folder / f"{split}.jsonl", num_classes=num_classes) for split in SPLITS}
        return Splits(name=name, num_classes=num_classes, **tables)
    folder = Path(name)
    if not folder.is_dir():
        raise DataError(
            f"unknown dataset {name!r}: use one of {', '.join(NUM_CLASSES)} or a folder holding "
            "train/dev/test files (.jsonl, .csv or .tsv) with `text` and `label`"
        )
    tables = {split: read_table(_find_split_file(folder, split)) for split in SPLITS}
    num_classes = max(max(t["label"]) for t in tables.values()) + 1
    if num_classes < 2:
        raise DataError(f"{folder}: needs at least two classes, found labels {{0}}")
    train_labels = set(tables["train"]["label"])
    for split in ("dev", "test"):
        unseen = sorted(set(tables[split]["label"]) - train_labels)
        if unseen:
            raise DataError(f"{_find_split_file(folder, split)}: label(s) {unseen} never occur in the train split, so "
                            "no model can learn them; add train rows of those classes or drop them")
    return Splits(name=str(folder), num_classes=num_classes, **tables)


def load_pool(dataset: str, kind: str, split: str) -> Dataset:
    """One of the attack authors' pre-generated poison files, e.g. `load_pool("sst2", "style_bible_pool", "train")`."""
    if dataset not in NUM_CLASSES:
        raise DataError(f"unknown dataset {dataset!r}: poison pools exist for {', '.join(NUM_CLASSES)}")
    if kind not in KINDS:
        raise DataError(f"unknown data kind {kind!r}: use one of {', '.join(KINDS)}")
    path = data_root() / dataset / kind / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: this pool does not exist (see the data README's list of files)")
    return read_table(path, num_classes=NUM_CLASSES[dataset])


def load_manifest() -> list[dict]:
    """The committed manifest: one entry per data file with sha256, rows, source URL and license."""
    return json.loads(MANIFEST_PATH.read_text())["files"]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_data(root: Path | None = None) -> list[str]:
    """Check every manifest file under `root` against its sha256; return the problems (empty when all is well)."""
    root = root or data_root()
    problems = []
    for entry in load_manifest():
        path = root / entry["file"]
        if not path.is_file():
            problems.append(f"{entry['file']}: missing")
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"{entry['file']}: sha256 mismatch")
    return problems

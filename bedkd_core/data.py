"""Find the data root, load and validate splits and poison pools, read bring-your-own files.

Introduced in chapter 2 (backdoored classifiers); every later chapter loads data through it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
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


class DataWarning(UserWarning):
    """Usable data that is probably not what you meant; `bedkd` prints it as one `bedkd: warning:` line."""


def _candidate_roots() -> list[Path]:
    roots = []
    if os.environ.get("BEDKD_DATA"):
        roots.append(Path(os.environ["BEDKD_DATA"]).expanduser())
    roots.append(REPO_ROOT / "data")
    roots.append(REPO_ROOT.parent / "shared" / "data")
    for parent in [Path.cwd(), *Path.cwd().parents]:
        roots.append(parent / "shared" / "data")
    return list(dict.fromkeys(roots))


def data_root(*, dataset: str | None = None) -> Path:
    """The first folder holding the built-in datasets (`dataset`'s clean splits, by default SST-2's):
    $BEDKD_DATA, the repo's data/, then ../shared/data."""
    need = dataset or "sst2"
    download = f"bedkd download --dataset {dataset}" if dataset else "bedkd download"
    if os.environ.get("BEDKD_DATA"):
        root = Path(os.environ["BEDKD_DATA"]).expanduser()
        if not (root / need / "clean").is_dir():
            raise DataError(
                f"BEDKD_DATA={root} does not hold the datasets (no {root / need / 'clean'}). "
                f"Point it at a folder laid out like ../shared/data, or run `{download} --to DIR`."
            )
        return root
    candidates = _candidate_roots()
    for root in candidates:
        if (root / need / "clean").is_dir():
            return root
    looked = ", ".join(str(r) for r in candidates)
    holding = f"{dataset}/" if dataset else "sst2/, olid/ and agnews/"
    raise DataError(
        f"data not found{f' for {dataset}' if dataset else ''}: looked in {looked}. Run `{download}` (needs "
        f"internet) or set BEDKD_DATA to a folder holding {holding}."
    )


@dataclass(frozen=True)
class Splits:
    """Train, dev and test splits of one task, each a Dataset with `text` and `label`."""

    name: str
    num_classes: int
    train: Dataset
    dev: Dataset
    test: Dataset


def read_table(path: str | Path, *, num_classes: int | None = None, flags: tuple[str, ...] = ()) -> Dataset:
    """Read a UTF-8 JSONL, CSV or TSV file with `text` and `label` into a Dataset (other columns are kept).

    Errors name the file and line: bytes that are not UTF-8, malformed rows, missing fields, texts that are empty
    or not strings, labels outside 0..K-1. `flags` names true/false columns (poison flags): a JSON boolean or the
    integer 0 or 1 (in CSV/TSV the text 0, 1, true or false) on every row, read as bools.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = list(_iter_rows(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    flagged = [name for name in flags if any(name in row for _, row in rows)]
    for line, row in rows:
        where = f"{path}:{line}"
        if "text" not in row or "label" not in row:
            raise DataError(f"{where}: needs fields `text` and `label`, found {sorted(row)}")
        _check_text(row["text"], where=where)
        row["label"] = _integer_label(row["label"], where=where)
        if row["label"] < 0 or (num_classes is not None and row["label"] >= num_classes):
            allowed = f"0..{num_classes - 1}" if num_classes is not None else "0..K-1 (K classes)"
            raise DataError(f"{where}: label {row['label']} is outside {allowed}; labels must be integers 0..K-1")
        for name in flagged:
            row[name] = _flag(row.get(name), name=name, where=where, text=path.suffix != ".jsonl")
    keys = list(rows[0][1])
    try:
        return Dataset.from_dict({k: [row.get(k) for _, row in rows] for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"{path}: a column mixes value types ({err}); give each column one type on every row") from None


def row_lines(path: str | Path) -> list[int]:
    """The line number of each row that `read_table(path)` returns, for messages naming file:line."""
    return [line for line, _ in _iter_rows(Path(path))]


def _check_text(value, *, where: str) -> None:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty text; give every row a text or drop the row")
        return
    if value is None:
        raise DataError(f"{where}: text is null, expected a string; give every row a text or drop the row")
    kind = type(value).__name__
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise DataError(f"{where}: text is {'an' if kind[0] in 'aeiou' else 'a'} {kind} ({shown}), expected a string; "
                    "write the text in quotes")


def _flag(value, *, name: str, where: str, text: bool) -> bool:
    """A poison flag as a bool: True/False or 0/1; from CSV/TSV (`text`) also the words 0, 1, true, false."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if text and isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise DataError(f"{where}: {name} {value!r} is not a boolean; write true or false (or 1 or 0), without quotes, "
                    "on every row")


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
    if path.suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(TABLE_SUFFIXES)}")
    text = _decoded(path)
    if path.suffix == ".jsonl":
        for line, raw in enumerate(io.StringIO(text, newline=None), start=1):  # \n, \r\n or \r ends a line
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line}: malformed JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line}: expected a JSON object per line")
            yield line, row
    else:  # csv reads \n and \r\n line ends alike
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more fields than the header names")
            yield reader.line_num, dict(row)


def _decoded(path: Path) -> str:
    """The file's text without a leading byte-order mark; bytes that are not UTF-8 raise a DataError."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: byte 0x{raw[err.start]:02x} at offset {err.start} is not UTF-8; save the "
                        "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None


def _find_split_file(folder: Path, split: str) -> Path:
    for suffix in TABLE_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    raise DataError(f"{folder}: no {split}.jsonl, {split}.csv or {split}.tsv")


def load_task(name: str) -> Splits:
    """Clean train/dev/test of a built-in dataset (`sst2`, `olid`, `agnews`) or of a folder of your own."""
    if name in NUM_CLASSES:
        folder = data_root(dataset=name) / name / "clean"
        num_classes = NUM_CLASSES[name]
        tables = {split: read_table(folder / f"{split}.jsonl", num_classes=num_classes) for split in SPLITS}
        return Splits(name=name, num_classes=num_classes, **tables)
    folder = Path(name)
    if not folder.is_dir():
        raise DataError(
            f"unknown dataset {name!r}: use one of {', '.join(NUM_CLASSES)} or a folder holding "
            "train/dev/test files (.jsonl, .csv or .tsv) with `text` and `label`"
        )
    paths = {split: _find_split_file(folder, split) for split in SPLITS}
    tables = {split: read_table(path) for split, path in paths.items()}
    num_classes = _check_classes(tables, paths)
    _warn_duplicates(tables, paths)
    return Splits(name=str(folder), num_classes=num_classes, **tables)


def _check_classes(tables: dict[str, Dataset], paths: dict[str, Path]) -> int:
    """K, when the train labels are exactly 0..K-1 with K >= 2 and dev and test use no others; else a DataError."""
    train = paths["train"]
    present = sorted(set(tables["train"]["label"]))
    rule = "classes must be exactly 0..K-1 with K >= 2, each present in train"
    if len(present) < 2:
        raise DataError(f"{train}: every train row has label {present[0]}; {rule}: add rows of the other classes")
    missing = sorted(set(range(present[-1] + 1)) - set(present))
    if missing:
        above = [label for label in present if label > missing[0]]
        line = _blamed_line(train, tables["train"]["label"], above)
        if line:
            raise DataError(f"{train}:{line}: label {above[0]} leaves class(es) {missing} with no train rows; "
                            f"{rule}: fix this label or renumber the classes")
        raise DataError(f"{train}: class(es) {missing} have no train rows but label(s) {above} do; {rule}: "
                        f"renumber the labels 0..{len(present) - 1}")
    for split in ("dev", "test"):
        unseen = sorted(set(tables[split]["label"]) - set(present))
        line = _blamed_line(paths[split], tables[split]["label"], unseen) if unseen else None
        if line:
            raise DataError(f"{paths[split]}:{line}: label {unseen[0]} never occurs in the train split, so no model "
                            "can learn it; add train rows of that class or drop this row")
        if unseen:
            raise DataError(f"{paths[split]}: label(s) {unseen} never occur in the train split, so no model can "
                            "learn them; add train rows of those classes or drop them")
    return len(present)


def _blamed_line(path: Path, labels: list[int], blamed: list[int]) -> int | None:
    """The line of the one row whose label is in `blamed`, or None when several rows are."""
    rows = [i for i, label in enumerate(labels) if label in blamed]
    return row_lines(path)[rows[0]] if len(rows) == 1 else None


def _warn_duplicates(tables: dict[str, Dataset], paths: dict[str, Path]) -> None:
    """Warn (a DataWarning) when train rows repeat test texts (whitespace aside): they inflate the test accuracy."""
    test_texts = {" ".join(text.split()) for text in tables["test"]["text"]}
    count = sum(" ".join(text.split()) in test_texts for text in tables["train"]["text"])
    if count:
        rows = "1 train row has" if count == 1 else f"{count} train rows have"
        warnings.warn(f"{paths['train']}: {rows} the same text as rows of {paths['test']}, so the test split "
                      "partly measures memorisation (CACC is inflated); drop them from train", DataWarning,
                      stacklevel=3)


def load_pool(dataset: str, kind: str, split: str) -> Dataset:
    """One of the attack authors' pre-generated poison files, e.g. `load_pool("sst2", "style_bible_pool", "train")`."""
    if dataset not in NUM_CLASSES:
        raise DataError(f"unknown dataset {dataset!r}: poison pools exist for {', '.join(NUM_CLASSES)}")
    if kind not in KINDS:
        raise DataError(f"unknown data kind {kind!r}: use one of {', '.join(KINDS)}")
    path = data_root(dataset=dataset) / dataset / kind / f"{split}.jsonl"
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

"""What the student copies (`bedkd_core.student`) and the Colab copies (`bedkd_core.colab_copies`) share.

The repository's addresses and bibliography from _config.yml, `plain_copy` (a notebook in plain Markdown,
through `bedkd_core.myst_plain`), the deterministic JSON layout (`render`), the chapters of `_toc.yml`, and
the sync of a folder of copies with `--check`.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import yaml

from .myst_plain import MarkupError, Plain, read_bibliography, year_suffixes
from .store import REPO_ROOT

REFERENCES_ID = "bedkd-references"
CELL_METADATA_DROPPED = ("execution", "ExecuteTime", "collapsed", "scrolled", "trusted")
NOTEBOOK_METADATA_DROPPED = ("widgets", "signature", "orig_nbformat", "orig_nbformat_minor")


class CopyError(ValueError):
    """A chapter cannot be turned into a copy; the message names the notebook (and cell)."""


# ---------------------------------------------------------------- the book's repository

def book_config(*, root: Path) -> dict:
    """The book's _config.yml; a CopyError when it is missing (the copies' links come from it)."""
    path = Path(root) / "_config.yml"
    if not path.is_file():
        raise CopyError(f"{path}: missing (the copies take the repository URL and branch from it)")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def colab_url(*, root: Path, path: str) -> str:
    """The Colab address of a file of the book's repository (`path` relative to its root), from _config.yml."""
    config = book_config(root=root)
    repository, colab = config["repository"], config["launch_buttons"]["colab_url"].rstrip("/")
    github = repository["url"].rstrip("/").removeprefix("https://github.com/")
    return f"{colab}/github/{github}/blob/{repository['branch']}/{path}"


def raw_url(*, root: Path, path: str = "") -> str:
    """The raw.githubusercontent.com address of a file of the book's repository (the prefix, for "")."""
    repository = book_config(root=root)["repository"]
    github = repository["url"].rstrip("/").removeprefix("https://github.com/")
    return f"https://raw.githubusercontent.com/{github}/{repository['branch']}/{path}"


def bibliography(*, root: Path) -> dict:
    """The entries of the BibTeX files that _config.yml names (`bibtex_bibfiles`)."""
    entries = {}
    for name in book_config(root=root).get("bibtex_bibfiles") or []:
        entries.update(read_bibliography(path=Path(root) / name))
    return entries


# ---------------------------------------------------------------- notebooks

def tags(cell: dict) -> list[str]:
    """The cell's tags."""
    return list((cell.get("metadata") or {}).get("tags") or [])


def source_text(cell: dict) -> str:
    """The cell's source as one string."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def new_cell(*, nb: dict, text: str, cell_id: str) -> dict:
    """A markdown cell for `nb`, with `cell_id` where its nbformat has cell ids."""
    cell = {"cell_type": "markdown", "metadata": {}, "source": text}
    if nb.get("nbformat_minor", 0) >= 5:
        cell["id"] = cell_id
    return cell


def plain_copy(nb: dict, *, source: str, assets: str, bibliography: dict) -> dict:
    """`nb` (not modified) with its markdown as plain Markdown, a reference list at the end, outputs stripped.

    `source` is the notebook's path in the repository; `assets` what a repository path needs in front to be
    a URL where the copy is opened (see `myst_plain.Plain`).
    """
    nb = copy.deepcopy(nb)
    match = re.match(r"(\d+)_", Path(source).name)
    settings = dict(folder=Path(source).parent.as_posix(), assets=assets, bibliography=bibliography,
                    chapter=str(int(match.group(1))) if match else "")
    cells = nb.get("cells", [])
    texts = {i: source_text(c) for i, c in enumerate(cells) if c.get("cell_type") == "markdown"}
    first = Plain(**settings)  # a first pass finds every work cited, for the 2021a/2021b suffixes
    _convert(first, texts, source)
    plain = Plain(**settings, suffixes=year_suffixes(keys=first.cited, bibliography=bibliography))
    for index, text in _convert(plain, texts, source).items():
        cells[index]["source"] = text
    for cell in cells:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        for key in CELL_METADATA_DROPPED:
            (cell.get("metadata") or {}).pop(key, None)
    references = plain.references()
    if references:
        cells.append(new_cell(nb=nb, text=references, cell_id=REFERENCES_ID))
    metadata = nb.setdefault("metadata", {})
    for key in NOTEBOOK_METADATA_DROPPED:
        metadata.pop(key, None)
    return nb


def _convert(plain: Plain, texts: dict[int, str], source: str) -> dict[int, str]:
    out = {}
    for index, text in texts.items():
        try:
            out[index] = plain.markdown(text)
        except MarkupError as err:
            raise CopyError(f"{source}: cell {index}: {err}") from None
    return out



def render(nb: dict) -> str:
    """The notebook as nbformat writes it (sorted keys, indent 1, sources split into lines, trailing newline)."""
    nb = copy.deepcopy(nb)
    for cell in nb.get("cells", []):
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(True)
    return json.dumps(nb, sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- the book's chapters

def default_root() -> Path:
    """The book: the repository holding bedkd_core, else the current folder."""
    return REPO_ROOT if (REPO_ROOT / "_toc.yml").is_file() else Path.cwd()


def toc_notebooks(root: str | Path | None = None) -> list[Path]:
    """Every .ipynb listed in the book's `_toc.yml` (root, chapters, parts, sections), in order."""
    root = Path(root) if root is not None else default_root()
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        raise CopyError(f"{toc_path}: no table of contents (run from the book's folder or pass --root)")
    try:
        toc = yaml.safe_load(toc_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise CopyError(f"{toc_path}: not valid YAML ({err})") from None
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    files.append(node[key])
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    paths = []
    for name in dict.fromkeys(files):
        path = root / name
        path = path if path.suffix else path.with_suffix(".ipynb")
        if path.suffix == ".ipynb" and path.is_file():
            paths.append(path)
    return paths


def read_chapters(*, chapters: list[Path], root: Path) -> list[tuple[Path, str, dict]]:
    """(path, path relative to the book, notebook) of each chapter; a CopyError names one that is unreadable."""
    out = []
    for chapter in chapters:
        try:
            nb = json.loads(chapter.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CopyError(f"{chapter}: cannot read the notebook ({err})") from None
        try:
            label = chapter.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            label = chapter.name
        out.append((chapter, label, nb))
    return out



def stale_paths(*, expected: dict[Path, str], folders: list[Path], kind: str) -> list[str]:
    """What is out of sync: `expected` files (path → content) missing or differing, or other notebooks in
    `folders`."""
    problems = []
    for path, content in expected.items():
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"{path}: differs from the {kind} of its chapter")
    for folder in folders:
        for path in sorted(folder.glob("*.ipynb")) if folder.is_dir() else []:
            if path not in expected:
                problems.append(f"{path}: no chapter of that name in _toc.yml")
    return problems


def write_paths(*, expected: dict[Path, str], folders: list[Path]) -> list[Path]:
    """Write the `expected` files that are missing or differ, remove other notebooks in `folders`; the files written."""
    written = []
    for path, content in expected.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            written.append(path)
    for folder in folders:
        for path in sorted(folder.glob("*.ipynb")):
            if path not in expected:
                path.unlink()
    return written



def sync_command(*, check: bool, find_stale, write, what: str, command: str) -> int:
    """`command`'s exit code: 0 written or in sync; 1 when `check` finds `what` stale; 2 when a chapter can't be copied.

    `find_stale` (the problems) and `write` (the files written) take no arguments. A chapter that cannot be copied
    is reported as `<command>: error: …`.
    """
    try:
        if check:
            problems = find_stale()
            if problems:
                print(f"{what} are out of date (run `{command}`):", file=sys.stderr)
                for problem in problems:
                    print(f"  {problem}", file=sys.stderr)
                return 1
            print(f"{what} are up to date")
            return 0
        written = write()
    except CopyError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{what} are up to date")
    return 0



def add_copy_arguments(parser: argparse.ArgumentParser, *, folder: str) -> None:
    """--out (default: `folder` in the book), --root and --check: the options of a command that writes copies."""
    parser.add_argument("--out", default=None, help=f"folder for the copies (default: {folder}/ in the book)")
    parser.add_argument("--root", default=None, help="the book's folder, holding _toc.yml (default: this repository)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the stale files")

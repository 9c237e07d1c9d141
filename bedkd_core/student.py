"""Student copies of the chapters: solutions removed, exercises kept. `bedkd student-copies [--out student/] [--check]`.

* Markdown cells lose their sphinx-exercise ```` ```{solution} ```` blocks (and everything between
  `{solution-start}` and `{solution-end}`, code cells included); the exercises stay. A markdown cell tagged
  `solution`, or one left empty, is dropped. A code cell tagged `solution` is an error: graded work lives in
  the otter notebooks of assignments/, not in the chapters.
* The MyST markup becomes plain Markdown (`copies.plain_copy`): citations as text with
  a reference list at the end, figures as images whose URL works from student/.
* The copy starts with its "Open in Colab" badge and a note; outputs, execution counts and widget state go.

`generate` writes student/NN_name.ipynb for every notebook in `_toc.yml`, byte-for-byte deterministic
(nbformat's JSON layout), so `--check` can tell exactly when student/ is stale.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from . import copies
from .copies import CopyError
from .myst_plain import after_fence

DESCRIPTION = ("Write student copies of the book's notebooks (every notebook in _toc.yml) into student/: solutions "
               "removed, MyST turned into plain Markdown, outputs stripped. With --check, write nothing and exit 1 "
               "naming the stale copies.")
SOLUTION_TAG = "solution"
NOTE_ID = "bedkd-student-note"
STUDENT_ASSETS = "../"
"""What a repository path needs in front to be reachable from a notebook in student/."""
COLAB_STUDENT = "colab/student"
"""Where the Colab versions of the student copies live (written by `bedkd colab-copies`)."""
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

_FENCE_OPEN = re.compile(r"^\s*(?P<fence>`{3,}|:{3,})\s*\{(?P<name>[\w-]+)\}")


# ---------------------------------------------------------------- markdown cells: solution blocks

def strip_solutions(markdown: str, *, gated: bool = False) -> tuple[str, bool, bool]:
    """Remove `{solution}` blocks and gated `{solution-start}`…`{solution-end}` spans from one markdown cell.

    `gated`: the cell starts inside a gated solution (a `{solution-start}` in an earlier cell). Returns the
    text, whether the cell ends inside a gated solution, and whether anything was removed.
    """
    out: list[str] = []
    lines = markdown.splitlines()
    removed = gated
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        name = match.group("name") if match else None
        if name in ("solution", "solution-start", "solution-end"):
            i = after_fence(lines, i, match.group("fence"))
            gated, removed = name == "solution-start", True
            continue
        if not gated:
            out.append(lines[i])
        i += 1
    if not removed:
        return markdown, gated, False
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n"), gated, True


def make_student_copy(nb: dict, *, source: str, bibliography: dict | None = None, assets: str = STUDENT_ASSETS,
                      colab: str | None = None) -> dict:
    """The student copy of notebook `nb` (not modified): solutions removed, plain Markdown (`copies.plain_copy`), and
    first a cell with the note and, given its `colab` address, the copy's "Open in Colab" badge."""
    cells, gated = [], False
    for index, cell in enumerate(nb.get("cells", [])):
        kind, tags = cell.get("cell_type"), copies.tags(cell)
        if kind == "code" and SOLUTION_TAG in tags:
            raise CopyError(f"{source}: cell {index} is a code cell tagged `{SOLUTION_TAG}`; graded work "
                                   "lives in the otter notebooks of assignments/, not in the chapters")
        if kind == "markdown" and SOLUTION_TAG in tags:
            continue
        if kind != "markdown":
            if not gated:
                cells.append(cell)
            continue
        text, gated, removed = strip_solutions(copies.source_text(cell), gated=gated)
        if text.strip() or not removed:
            cells.append({**cell, "source": text})
    nb = copies.plain_copy({**nb, "cells": cells}, source=source, assets=assets, bibliography=bibliography or {})
    note = f"> **Student copy** of `{source}`: the exercise solutions are removed."
    if colab:
        note = f"[![Open In Colab]({BADGE})]({colab})\n\n{note}"
    nb["cells"].insert(0, copies.new_cell(nb=nb, text=note, cell_id=NOTE_ID))
    nb["metadata"]["bedkd"] = {"student_copy": True, "source": source}
    return nb


def _expected(out_dir: Path, chapters: list[Path], root: Path) -> dict[Path, str]:
    """student file → its rendered content; its badge opens the Colab version of the same student copy."""
    entries = copies.bibliography(root=root)
    assets = Path(os.path.relpath(root, out_dir)).as_posix() + "/"
    out = {}
    for path, label, nb in copies.read_chapters(chapters=chapters, root=root):
        colab = copies.colab_url(root=root, path=f"{COLAB_STUDENT}/{path.name}")
        out[out_dir / path.name] = copies.render(make_student_copy(nb, source=label, bibliography=entries,
                                                                   assets=assets, colab=colab))
    return out


def _resolve(out_dir, root, chapters) -> tuple[Path, Path, list[Path]]:
    root = Path(root) if root is not None else copies.default_root()
    out_dir = Path(out_dir) if out_dir is not None else root / "student"
    chapters = [Path(c) for c in chapters] if chapters is not None else copies.toc_notebooks(root)
    return out_dir, root, chapters


def stale_files(out_dir=None, *, root=None, chapters=None) -> list[str]:
    """What is out of sync in `out_dir`: missing, differing, or extra student notebooks (empty when in sync)."""
    out_dir, root, chapters = _resolve(out_dir, root, chapters)
    return copies.stale_paths(expected=_expected(out_dir, chapters, root), folders=[out_dir], kind="student copy")


def generate(out_dir=None, *, root=None, chapters=None) -> list[Path]:
    """Write the student copies into `out_dir` (default <book>/student); remove stale ones. The files written."""
    out_dir, root, chapters = _resolve(out_dir, root, chapters)
    return copies.write_paths(expected=_expected(out_dir, chapters, root), folders=[out_dir])


# ---------------------------------------------------------------- command line

def add_command(subparsers) -> None:
    """Register `student-copies` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("student-copies", help="write student copies of the chapters (solutions removed)",
                                   description=DESCRIPTION)
    copies.add_copy_arguments(parser, folder="student")
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """0 when written or in sync; 1 when --check finds stale copies; 2 when a chapter cannot be copied."""
    return copies.sync_command(check=args.check, find_stale=lambda: stale_files(args.out, root=args.root),
                               write=lambda: generate(args.out, root=args.root), what="student copies",
                               command="bedkd student-copies")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedkd student-copies", description=DESCRIPTION)
    copies.add_copy_arguments(parser, folder="student")
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

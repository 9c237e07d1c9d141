"""Colab copies of the chapters: `bedkd colab-copies [--check]` writes colab/NN_name.ipynb and colab/student/.

Colab renders plain Markdown, not MyST: each copy is the chapter in plain Markdown (`copies.plain_copy`, with
`bedkd_core.myst_plain`: exercises as bold paragraphs, each solution a collapsed `<details>` block, citations as
text with a reference list, figures from raw.githubusercontent.com). colab/student/ holds the student copies
made the same way (no solutions at all, each opening with its own "Open in Colab" badge).
A note after the title says where the copy comes from, how long its quick run took on a CPU in the Colab
simulation (`results/benchmarks/colab.json`, written by `benchmarks/colab_sim.py`) and links its student copy.
Code cells are kept as they are (outputs stripped): the first one is the setup cell, whose Colab branch installs
everything. The files are byte-for-byte deterministic, so `--check` (run by the tests) catches a stale copy.

As a Sphinx extension (`sphinx: extra_extensions` in _config.yml) the module points the book's Colab launch
button at these copies, and adds one for the student copy.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

from . import copies, student
from .copies import colab_url, render

DESCRIPTION = ("Write Colab copies of the book's notebooks (every notebook in _toc.yml) into colab/, and of their "
               "student copies into colab/student/: MyST directives become plain Markdown, solutions collapsed. "
               "With --check, write nothing and exit 1 naming the stale copies.")
COLAB_DIR = "colab"
TIMINGS = Path("results") / "benchmarks" / "colab.json"
NOTE_ID = "bedkd-colab-note"
CACHES = {"empty per chapter": "from an empty cache", "shared": "reusing victims cached by other chapters"}
"""How the timings file's `victim_cache` reads in a note."""
CHAPTERS_DIR = "chapters"


# ---------------------------------------------------------------- notebooks

def make_colab_copy(nb: dict, *, source: str, note: str) -> dict:
    """The Colab copy of a plain-Markdown notebook `nb` (not modified): `note` after the title, Colab metadata.

    In a student copy the note goes after the title too, below the student note and its badge.
    """
    nb = copy.deepcopy(nb)
    metadata = nb.setdefault("metadata", {})
    cells = nb.setdefault("cells", [])
    first = 1 if metadata.get("bedkd", {}).get("student_copy") else 0
    at = first + 1 if len(cells) > first and cells[first].get("cell_type") == "markdown" else first
    cells.insert(at, copies.new_cell(nb=nb, text=note, cell_id=NOTE_ID))
    metadata["bedkd"] = {**metadata.get("bedkd", {}), "colab_copy": True, "source": source}
    metadata["accelerator"] = "GPU"  # Colab opens it on a GPU runtime when it can
    metadata["colab"] = {"gpuType": "T4", "provenance": [], "toc_visible": True}
    return nb


def quick_run_line(root: Path, stem: str) -> str:
    """How long the chapter's quick run took in the Colab simulation on a CPU, from the timings file."""
    path = root / TIMINGS
    runs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    run = runs.get("chapters", {}).get(stem)
    if not run:
        return "Its quick run on a CPU runtime has not been timed yet."
    where = runs["provenance"]
    threads = "one CPU thread" if runs["threads"] == 1 else f"{runs['threads']} CPU threads"
    return (f"Its quick run with that backbone took about {math.ceil(run['seconds'] / 60)} min ({run['seconds']:.0f} s) "
            f"top to bottom on {threads}, {CACHES[runs['victim_cache']]}, in a Colab-like runtime (commit "
            f"{where['git_commit'][:7]}, {where['date'][:10]}).")


def _note(root: Path, label: str, *, student_copy: str | None) -> str:
    stem = Path(label).stem
    text = (f"> **Colab copy** of `{label}` from the BeDKD book, written by `bedkd colab-copies`. Run the cells in "
            "order: the first one clones the book's repository, installs `bedkd_core` and downloads the data. "
            "The copy asks for a GPU runtime, which the default backbone `bert-base-uncased` and the full scale "
            "(`BEDKD_SCALE=full`) need. On a CPU runtime, run `%env BEDKD_MODEL=minilm` in a cell above the setup "
            f"cell to use the small backbone. {quick_run_line(root, stem)}")
    if student_copy:
        text += f" [Student copy]({colab_url(root=root, path=student_copy)}) (solutions removed)."
    return text


def _expected(out_dir: Path, chapters: list[Path], root: Path) -> dict[Path, str]:
    """colab file → its rendered content, for each chapter and its student copy."""
    out, entries, assets = {}, copies.bibliography(root=root), copies.raw_url(root=root)
    for path, label, nb in copies.read_chapters(chapters=chapters, root=root):
        student_label = f"{COLAB_DIR}/student/{path.name}"
        full = copies.plain_copy(nb, source=label, assets=assets, bibliography=entries)
        out[out_dir / path.name] = render(make_colab_copy(full, source=label, note=_note(
            root, label, student_copy=student_label)))
        copy_nb = student.make_student_copy(nb, source=label, bibliography=entries, assets=assets,
                                            colab=colab_url(root=root, path=student_label))
        copy_label = f"student/{path.name}"
        out[out_dir / "student" / path.name] = render(make_colab_copy(copy_nb, source=copy_label, note=_note(
            root, copy_label, student_copy=None)))
    return out


def _resolve(out_dir, root) -> tuple[Path, Path, list[Path]]:
    root = Path(root) if root is not None else copies.default_root()
    out_dir = Path(out_dir) if out_dir is not None else root / COLAB_DIR
    return out_dir, root, copies.toc_notebooks(root)


def stale_files(out_dir=None, *, root=None) -> list[str]:
    """What is out of sync in `out_dir` (default <book>/colab) and its student/ folder; empty when in sync."""
    out_dir, root, chapters = _resolve(out_dir, root)
    return copies.stale_paths(expected=_expected(out_dir, chapters, root), folders=[out_dir, out_dir / "student"],
                              kind="Colab copy")


def generate(out_dir=None, *, root=None) -> list[Path]:
    """Write the Colab copies into `out_dir` (default <book>/colab); remove stale ones. The files written."""
    out_dir, root, chapters = _resolve(out_dir, root)
    return copies.write_paths(expected=_expected(out_dir, chapters, root), folders=[out_dir, out_dir / "student"])


# ---------------------------------------------------------------- the book's launch button

def point_launch_buttons(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Send the page's Colab button to its Colab copy and add one for its student copy (html-page-context)."""
    if not pagename.startswith(f"{CHAPTERS_DIR}/"):
        return
    root = Path(app.srcdir)
    name = f"{Path(pagename).name}.ipynb"
    for group in context.get("header_buttons", []):
        buttons = group.get("buttons", []) if group.get("label") == "launch-buttons" else []
        for button in [b for b in buttons if b.get("text") == "Colab"]:
            button["url"] = colab_url(root=root, path=f"{COLAB_DIR}/{name}")
            buttons.insert(buttons.index(button) + 1, {**button, "text": "Colab (student copy)",
                                                       "tooltip": "Launch the student copy on Colab",
                                                       "url": colab_url(root=root, path=f"{COLAB_DIR}/student/{name}")})


def setup(app) -> dict:
    """Sphinx extension: runs after sphinx-book-theme has made the launch buttons."""
    app.connect("html-page-context", point_launch_buttons, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------- command line

def add_command(subparsers) -> None:
    """Register `colab-copies` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("colab-copies", help="write Colab copies of the chapters (plain Markdown)",
                                   description=DESCRIPTION)
    copies.add_copy_arguments(parser, folder=COLAB_DIR)
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """0 when written or in sync; 1 when --check finds stale copies; 2 when a chapter cannot be copied."""
    return copies.sync_command(check=args.check, find_stale=lambda: stale_files(args.out, root=args.root),
                               write=lambda: generate(args.out, root=args.root), what="Colab copies",
                               command="bedkd colab-copies")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedkd colab-copies", description=DESCRIPTION)
    copies.add_copy_arguments(parser, folder=COLAB_DIR)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

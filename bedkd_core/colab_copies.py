"""Colab copies of the chapters: `bedkd colab-copies [--check]` writes colab/NN_name.ipynb and colab/student/.

Colab renders plain Markdown, not MyST, so each chapter's markdown is rewritten (`to_markdown`):
* ```` ```{exercise} Title ```` becomes a bold "Exercise N.k: Title" paragraph and its text;
* ```` ```{solution} label ```` becomes a collapsed `<details>` block, as the book's pages collapse it (the
  student copies, colab/student/ among them, have no solutions at all);
* any other directive (`{note}`, `{admonition}` …) becomes a quotation headed by its title or name;
* option lines (`:label:`, `:class:`), label targets (`(name)=`) and links to labels go (their text stays).
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
import re
import sys
from pathlib import Path

import yaml

from . import student
from .student import StudentCopyError, default_root, read_chapters, render, toc_notebooks

DESCRIPTION = ("Write Colab copies of the book's notebooks (every notebook in _toc.yml) into colab/, and of their "
               "student copies into colab/student/: MyST directives become plain Markdown, solutions collapsed. "
               "With --check, write nothing and exit 1 naming the stale copies.")
COLAB_DIR = "colab"
TIMINGS = Path("results") / "benchmarks" / "colab.json"
NOTE_ID = "bedkd-colab-note"
CACHES = {"empty per chapter": "from an empty cache", "shared": "reusing victims cached by other chapters"}
"""How the timings file's `victim_cache` reads in a note."""
CHAPTERS_DIR = "chapters"

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|:{3,})\s*\{(?P<name>[\w-]+)\}\s*(?P<title>.*?)\s*$")
_OPTION = re.compile(r"^\s*:[\w-]+:")
_TARGET = re.compile(r"^\s*\([\w-]+\)=\s*$")
_LABEL_LINK = re.compile(r"\[([^\]]+)\]\(([\w-]+)\)")  # [text](label): no scheme, path or anchor


class ColabCopyError(StudentCopyError):
    """A chapter cannot be turned into a Colab copy; the message names the notebook and what to change."""


# ---------------------------------------------------------------- markdown

def to_markdown(text: str, *, numbers: list[int], chapter: str = "") -> str:
    """One markdown cell's MyST turned into plain Markdown. `numbers` holds the count of exercises seen so far in
    the notebook (updated); `chapter` ("4") prefixes their numbers."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            if not _TARGET.match(lines[i]):
                out.append(_LABEL_LINK.sub(r"\1", lines[i]))
            i += 1
            continue
        end = student.after_fence(lines, i, match.group("fence"))
        body = lines[i + 1 : end - 1]
        while body and _OPTION.match(body[0]):
            body = body[1:]
        inner = to_markdown("\n".join(body), numbers=numbers, chapter=chapter)
        out.append(_block(match.group("name"), match.group("title"), inner, numbers=numbers, chapter=chapter))
        i = end
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")


def _block(name: str, title: str, body: str, *, numbers: list[int], chapter: str) -> str:
    if name == "exercise":
        numbers[0] += 1
        number = f"{chapter}.{numbers[0]}" if chapter else str(numbers[0])
        return f"**Exercise {number}{': ' + title if title else ''}**\n\n{body}\n"
    if name == "solution":
        number = f"{chapter}.{numbers[0]}" if chapter else str(numbers[0])
        return f"<details>\n<summary><b>Solution to exercise {number}</b></summary>\n\n{body}\n\n</details>\n"
    if name in ("solution-start", "solution-end"):
        raise ColabCopyError("gated solutions ({solution-start} … {solution-end}) cannot be collapsed across cells "
                             "in Colab; write the solution as one {solution} block")
    heading = title or name.replace("-", " ").capitalize()
    quoted = "\n".join(f"> {line}" if line else ">" for line in body.splitlines())
    return f"> **{heading}.**\n>\n{quoted}\n"


# ---------------------------------------------------------------- notebooks

def make_colab_copy(nb: dict, *, source: str, note: str) -> dict:
    """The Colab copy of notebook `nb` (not modified): plain Markdown, outputs stripped, `note` after the title."""
    nb = copy.deepcopy(nb)
    match = re.match(r"(\d+)_", Path(source).name)
    numbers, chapter = [0], str(int(match.group(1))) if match else ""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            cell["source"] = to_markdown(student.source_text(cell), numbers=numbers, chapter=chapter)
        elif cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        for key in student.CELL_METADATA_DROPPED:
            (cell.get("metadata") or {}).pop(key, None)
    note_cell = {"cell_type": "markdown", "metadata": {}, "source": note}
    if nb.get("nbformat_minor", 0) >= 5:
        note_cell["id"] = NOTE_ID
    cells = nb.get("cells", [])
    cells.insert(1 if cells and cells[0].get("cell_type") == "markdown" else 0, note_cell)
    metadata = nb.setdefault("metadata", {})
    for key in student.NOTEBOOK_METADATA_DROPPED:
        metadata.pop(key, None)
    metadata["bedkd"] = {**metadata.get("bedkd", {}), "colab_copy": True, "source": source}
    metadata["accelerator"] = "GPU"  # Colab opens it on a GPU runtime when it can
    metadata["colab"] = {"gpuType": "T4", "provenance": [], "toc_visible": True}
    return nb


def colab_url(root: Path, path: str) -> str:
    """The Colab address of a file of the book's repository (`path` relative to its root), from _config.yml."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    repository, colab = config["repository"], config["launch_buttons"]["colab_url"].rstrip("/")
    github = repository["url"].rstrip("/").removeprefix("https://github.com/")
    return f"{colab}/github/{github}/blob/{repository['branch']}/{path}"


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
        text += f" [Student copy]({colab_url(root, student_copy)}) (solutions removed)."
    return text


def _expected(out_dir: Path, chapters: list[Path], root: Path) -> dict[Path, str]:
    """colab file → its rendered content, for each chapter and its student copy."""
    out = {}
    for path, label, nb in read_chapters(chapters, root):
        student_label = f"{COLAB_DIR}/student/{path.name}"
        copy_nb = student.make_student_copy(nb, source=label)
        out[out_dir / path.name] = render(make_colab_copy(nb, source=label, note=_note(
            root, label, student_copy=student_label)))
        copy_label = f"student/{path.name}"
        out[out_dir / "student" / path.name] = render(make_colab_copy(copy_nb, source=copy_label, note=_note(
            root, copy_label, student_copy=None)))
    return out


def _resolve(out_dir, root) -> tuple[Path, Path, list[Path]]:
    root = Path(root) if root is not None else default_root()
    out_dir = Path(out_dir) if out_dir is not None else root / COLAB_DIR
    return out_dir, root, toc_notebooks(root)


def stale_files(out_dir=None, *, root=None) -> list[str]:
    """What is out of sync in `out_dir` (default <book>/colab) and its student/ folder; empty when in sync."""
    out_dir, root, chapters = _resolve(out_dir, root)
    return student.stale_paths(_expected(out_dir, chapters, root), [out_dir, out_dir / "student"],
                               kind="Colab copy")


def generate(out_dir=None, *, root=None) -> list[Path]:
    """Write the Colab copies into `out_dir` (default <book>/colab); remove stale ones. The files written."""
    out_dir, root, chapters = _resolve(out_dir, root)
    return student.write_paths(_expected(out_dir, chapters, root), [out_dir, out_dir / "student"])


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
            button["url"] = colab_url(root, f"{COLAB_DIR}/{name}")
            buttons.insert(buttons.index(button) + 1, {**button, "text": "Colab (student copy)",
                                                       "tooltip": "Launch the student copy on Colab",
                                                       "url": colab_url(root, f"{COLAB_DIR}/student/{name}")})


def setup(app) -> dict:
    """Sphinx extension: runs after sphinx-book-theme has made the launch buttons."""
    app.connect("html-page-context", point_launch_buttons, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------- command line

def add_command(subparsers) -> None:
    """Register `colab-copies` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("colab-copies", help="write Colab copies of the chapters (plain Markdown)",
                                   description=DESCRIPTION)
    student.add_copy_arguments(parser, folder=COLAB_DIR)
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """0 when written or in sync; 1 when --check finds stale copies; 2 when a chapter cannot be copied."""
    return student.sync_command(check=args.check, find_stale=lambda: stale_files(args.out, root=args.root),
                                write=lambda: generate(args.out, root=args.root), what="Colab copies",
                                command="bedkd colab-copies")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedkd colab-copies", description=DESCRIPTION)
    student.add_copy_arguments(parser, folder=COLAB_DIR)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Student copies of the chapters: solutions removed, exercises kept. `bedkd student-copies [--out student/] [--check]`.

* Code cells tagged `solution` (the graded assignments) keep their imports, each top-level function's `def`
  line(s) and docstring; the body becomes `raise NotImplementedError("Exercise: implement <name>")`.
  Other top-level statements of such a cell are part of the solution and are dropped.
* Markdown cells lose their sphinx-exercise ```` ```{solution} ```` blocks (and everything between
  `{solution-start}` and `{solution-end}`, code cells included); the exercises stay. A markdown cell tagged
  `solution`, or one left empty, is dropped.
* Outputs, execution counts and saved widget state are stripped.

`generate` writes student/NN_name.ipynb for every notebook in `_toc.yml`, byte-for-byte deterministic
(nbformat's JSON layout), so `--check` can tell exactly when student/ is stale.
"""
from __future__ import annotations

import argparse
import ast
import copy
import io
import json
import re
import sys
import tokenize
from pathlib import Path

from .store import REPO_ROOT


DESCRIPTION = ("Write student copies of the book's notebooks (every notebook in _toc.yml) into student/: solutions "
               "removed, graded functions stubbed, outputs stripped. With --check, write nothing and exit 1 "
               "naming the stale copies.")
SOLUTION_TAG = "solution"
ASSIGNMENT_PREFIX = "assignment:"
NOTE_ID = "bedkd-student-note"
CELL_METADATA_DROPPED = ("execution", "ExecuteTime", "collapsed", "scrolled", "trusted")
NOTEBOOK_METADATA_DROPPED = ("widgets", "signature", "orig_nbformat", "orig_nbformat_minor")

_FENCE_OPEN = re.compile(r"^\s*(?P<fence>`{3,}|:{3,})\s*\{(?P<name>[\w-]+)\}")


class StudentCopyError(ValueError):
    """A chapter cannot be turned into a student copy; the message names the notebook and cell."""


# ---------------------------------------------------------------- code cells: stubs

def stub_code(source: str) -> str:
    """A solution cell's code with every top-level function body replaced by a NotImplementedError stub.

    Keeps the leading comments, the top-level imports (in order) and each function's decorators, `def`
    line(s) and docstring; drops every other top-level statement. SyntaxError when the code does not parse.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    colons = _colon_positions(source)
    first = tree.body[0].lineno if tree.body else len(lines) + 1
    if tree.body and getattr(tree.body[0], "decorator_list", None):
        first = min(d.lineno for d in tree.body[0].decorator_list)
    head = [line.rstrip() for line in lines[: first - 1] if line.strip().startswith("#")]
    imports, stubs = [], []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(_segment_lines(lines, node))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stubs.append(_stub_definition(lines, colons, node))
    blocks = ["\n".join(head + imports)] if head or imports else []
    if stubs:
        blocks.append("\n\n\n".join(stubs))
    else:
        blocks.append("# Exercise: write your solution here")
    return "\n\n".join(blocks)


def _segment_lines(lines: list[str], node: ast.AST) -> str:
    return "\n".join(line.rstrip() for line in lines[node.lineno - 1 : node.end_lineno])


def _colon_positions(source: str) -> list[tuple[int, int]]:
    """(row, col) of every `:` operator token, in source order."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [tok.start for tok in tokens if tok.type == tokenize.OP and tok.string == ":"]


def _stub_definition(lines: list[str], colons: list[tuple[int, int]], node) -> str:
    """Decorators, signature and docstring of `node`; a function's body becomes the stub, a class's methods too."""
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    body0 = node.body[0]
    begin, end = _position(lines, node), _position(lines, body0)
    row, col = max(p for p in colons if begin < p < end)  # the colon that ends the signature
    header = [line.rstrip() for line in lines[start - 1 : row - 1]] + [lines[row - 1][: col + 1]]
    inline = body0.lineno == row  # `def f(): return 1`: the body shares the colon's line
    indent = " " * (node.col_offset + 4 if inline else body0.col_offset)
    out = header
    body = node.body
    if _is_docstring(body0):
        segment = ast.get_source_segment("\n".join(lines), body0)
        out.append(indent + segment)
        body = body[1:]
    if isinstance(node, ast.ClassDef):
        members = [_stub_definition(lines, colons, n) for n in body
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        if members:
            out.append("\n\n".join(members))
        elif not _is_docstring(body0):
            out.append(f"{indent}pass")
    else:
        out.append(f'{indent}raise NotImplementedError("Exercise: implement {node.name}")')
    return "\n".join(out)


def _position(lines: list[str], node: ast.AST) -> tuple[int, int]:
    """(row, column in characters) of a node; ast counts columns in UTF-8 bytes, tokenize in characters."""
    line = lines[node.lineno - 1]
    return node.lineno, len(line.encode("utf-8")[: node.col_offset].decode("utf-8", errors="ignore"))


def _is_docstring(node: ast.AST) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


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


def after_fence(lines: list[str], i: int, fence: str) -> int:
    """The index after the fence that closes the block opened on line i (CommonMark: same char, as long or longer)."""
    close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
    for j in range(i + 1, len(lines)):
        if close.match(lines[j]):
            return j + 1
    return len(lines)


# ---------------------------------------------------------------- notebooks

def _tags(cell: dict) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags") or [])


def source_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def make_student_copy(nb: dict, *, source: str | None = None) -> dict:
    """The student copy of notebook `nb` (a dict or NotebookNode, not modified); `source` is noted in metadata."""
    nb = copy.deepcopy(nb)
    cells, gated, changed = [], False, False
    for index, cell in enumerate(nb.get("cells", [])):
        kind, tags = cell.get("cell_type"), _tags(cell)
        if kind == "markdown":
            if SOLUTION_TAG in tags:
                changed = True
                continue
            text, gated, removed = strip_solutions(source_text(cell), gated=gated)
            if removed:
                changed = True
                if not text.strip():
                    continue
                cell["source"] = text
        elif gated:
            changed = True  # a code cell inside a gated solution
            continue
        elif kind == "code" and SOLUTION_TAG in tags:
            try:
                cell["source"] = stub_code(source_text(cell))
            except SyntaxError as err:
                where = f"{source}: " if source else ""
                raise StudentCopyError(f"{where}cell {index} (tagged {SOLUTION_TAG}) does not parse as Python "
                                       f"(line {err.lineno}: {err.msg}); cannot stub it") from None
            changed = True
        if kind == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in CELL_METADATA_DROPPED:
            (cell.get("metadata") or {}).pop(key, None)
        cells.append(cell)
    if changed:
        cells.insert(1 if cells and cells[0].get("cell_type") == "markdown" else 0, _note_cell(nb, source))
    nb["cells"] = cells
    metadata = nb.setdefault("metadata", {})
    for key in NOTEBOOK_METADATA_DROPPED:
        metadata.pop(key, None)
    metadata["bedkd"] = {"student_copy": True, **({"source": source} if source else {})}
    return nb


def _note_cell(nb: dict, source: str | None) -> dict:
    name = Path(source).name if source else "this notebook"
    graded = any(t.startswith(ASSIGNMENT_PREFIX) for c in nb.get("cells", []) for t in _tags(c))
    text = f"> **Student copy** of `{name}`: the exercise solutions are removed."
    if graded:
        text += (" Each graded assignment's function raises `NotImplementedError` until you implement it; "
                 f"check your work with `bedkd grade student/{name}`.")
    cell = {"cell_type": "markdown", "metadata": {}, "source": text}
    if nb.get("nbformat_minor", 0) >= 5:
        cell["id"] = NOTE_ID
    return cell


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
    import yaml

    root = Path(root) if root is not None else default_root()
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        raise StudentCopyError(f"{toc_path}: no table of contents (run from the book's folder or pass --root)")
    try:
        toc = yaml.safe_load(toc_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise StudentCopyError(f"{toc_path}: not valid YAML ({err})") from None
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


def read_chapters(chapters: list[Path], root: Path) -> list[tuple[Path, str, dict]]:
    """(path, path relative to the book, notebook) of each chapter; a StudentCopyError names one that is unreadable."""
    out = []
    for chapter in chapters:
        try:
            nb = json.loads(chapter.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StudentCopyError(f"{chapter}: cannot read the notebook ({err})") from None
        try:
            label = chapter.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            label = chapter.name
        out.append((chapter, label, nb))
    return out


def _expected(out_dir: Path, chapters: list[Path], root: Path) -> dict[Path, str]:
    """student file → its rendered content."""
    return {out_dir / path.name: render(make_student_copy(nb, source=label))
            for path, label, nb in read_chapters(chapters, root)}


def _resolve(out_dir, root, chapters) -> tuple[Path, Path, list[Path]]:
    root = Path(root) if root is not None else default_root()
    out_dir = Path(out_dir) if out_dir is not None else root / "student"
    chapters = [Path(c) for c in chapters] if chapters is not None else toc_notebooks(root)
    return out_dir, root, chapters


def stale_paths(expected: dict[Path, str], folders: list[Path], *, kind: str) -> list[str]:
    """What is out of sync: `expected` files (path → content) missing or differing, or other notebooks in `folders`."""
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


def write_paths(expected: dict[Path, str], folders: list[Path]) -> list[Path]:
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


def stale_files(out_dir=None, *, root=None, chapters=None) -> list[str]:
    """What is out of sync in `out_dir`: missing, differing, or extra student notebooks (empty when in sync)."""
    out_dir, root, chapters = _resolve(out_dir, root, chapters)
    return stale_paths(_expected(out_dir, chapters, root), [out_dir], kind="student copy")


def generate(out_dir=None, *, root=None, chapters=None) -> list[Path]:
    """Write the student copies into `out_dir` (default <book>/student); remove stale ones. The files written."""
    out_dir, root, chapters = _resolve(out_dir, root, chapters)
    return write_paths(_expected(out_dir, chapters, root), [out_dir])


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
    except StudentCopyError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{what} are up to date")
    return 0


# ---------------------------------------------------------------- command line

def add_command(subparsers) -> None:
    """Register `student-copies` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("student-copies", help="write student copies of the chapters (solutions removed)",
                                   description=DESCRIPTION)
    add_copy_arguments(parser, folder="student")
    parser.set_defaults(handler=run_command)


def add_copy_arguments(parser: argparse.ArgumentParser, *, folder: str) -> None:
    """--out (default: `folder` in the book), --root and --check: the options of a command that writes copies."""
    parser.add_argument("--out", default=None, help=f"folder for the copies (default: {folder}/ in the book)")
    parser.add_argument("--root", default=None, help="the book's folder, holding _toc.yml (default: this repository)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the stale files")


def run_command(args: argparse.Namespace) -> int:
    """0 when written or in sync; 1 when --check finds stale copies; 2 when a chapter cannot be copied."""
    return sync_command(check=args.check, find_stale=lambda: stale_files(args.out, root=args.root),
                        write=lambda: generate(args.out, root=args.root), what="student copies",
                        command="bedkd student-copies")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedkd student-copies", description=DESCRIPTION)
    add_copy_arguments(parser, folder="student")
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

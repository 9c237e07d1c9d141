"""Static checks that the chapters read like a book: code and display math fit the page, chapters hold
no helper functions or hand-parsed results files, graded assignments live in their own notebooks, and no
paragraph is repeated word for word across chapters."""
import itertools
import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
WIDTH = 80
REPEAT_WORDS = 20
COLAB = "https://colab.research.google.com/github/bedkd-book/bedkd-book/blob/main/assignments/student"
ASSIGNMENTS = {"03": "ch03_attacks", "04": "ch04_dmm", "05": "ch05_akd", "06": "ch06_baselines"}
HISTORY = ("first version", "first-version", "current version", "lent gpu", "lent a gpu")


def cells(path: Path, kind: str) -> list[tuple[int, str]]:
    notebook = json.loads(path.read_text())
    return [(i, "".join(c["source"])) for i, c in enumerate(notebook["cells"]) if c["cell_type"] == kind]


def fenced_code(markdown: str) -> list[str]:
    """The lines of the ```python blocks of a markdown cell."""
    return [line for block in re.findall(r"```python\n(.*?)```", markdown, re.DOTALL)
            for line in block.splitlines()]


def display_math(markdown: str) -> list[str]:
    return [line for block in re.findall(r"\$\$(.*?)\$\$", markdown, re.DOTALL) for line in block.splitlines()]


def long_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if len(line) > WIDTH]


def prose_words(markdown: str) -> list[str]:
    """The words of a markdown cell without its display math and code blocks."""
    text = re.sub(r"\$\$.*?\$\$|```.*?```", " ", markdown, flags=re.DOTALL)
    return re.findall(r"\w+", text.lower())


def shingles(path: Path) -> dict[tuple[str, ...], int]:
    """Every run of REPEAT_WORDS consecutive words of the chapter's prose, with the cell it is in."""
    found = {}
    for i, text in cells(path, "markdown"):
        words = prose_words(text)
        for k in range(len(words) - REPEAT_WORDS + 1):
            found.setdefault(tuple(words[k:k + REPEAT_WORDS]), i)
    return found


def repeated_passages(paths: list[Path]) -> list[str]:
    by_chapter = {path: shingles(path) for path in paths}
    problems = []
    for a, b in itertools.combinations(paths, 2):
        common = set(by_chapter[a]) & set(by_chapter[b])
        for cell_a, cell_b in sorted({(by_chapter[a][s], by_chapter[b][s]) for s in common}):
            example = next(s for s in common if (by_chapter[a][s], by_chapter[b][s]) == (cell_a, cell_b))
            problems.append(f"{a.name} cell {cell_a} and {b.name} cell {cell_b}: '{' '.join(example)} ...'")
    return problems


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_code_lines_fit_the_page(path):
    too_long = [f"cell {i}: {line}" for i, text in cells(path, "code") for line in long_lines(text.splitlines())]
    too_long += [f"cell {i} (code block): {line}" for i, text in cells(path, "markdown")
                 for line in long_lines(fenced_code(text))]
    assert not too_long, f"code lines over {WIDTH} characters:\n" + "\n".join(too_long)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_display_math_fits_the_column(path):
    too_long = [f"cell {i}: {line}" for i, text in cells(path, "markdown") for line in long_lines(display_math(text))]
    assert not too_long, (f"display math lines over {WIDTH} characters of LaTeX (break them with aligned or "
                          "split):\n" + "\n".join(too_long))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapters_leave_plumbing_to_bedkd_core(path):
    problems = []
    for i, text in cells(path, "code"):
        problems += [f"cell {i} defines {name}(): move it into bedkd_core.book"
                     for name in re.findall(r"^def (\w+)", text, re.MULTILINE)]
        if re.search(r"json\.loads?\(|\.read_text\(\)", text):
            problems.append(f"cell {i} parses a file by hand: read it through bedkd_core.book")
        if "inspect.signature" in text:
            problems.append(f"cell {i} prints signatures by hand: use book.api_summary")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_graded_assignments_live_in_their_own_notebooks(path):
    notebook = json.loads(path.read_text())
    tagged = [i for i, c in enumerate(notebook["cells"])
              if any(t == "solution" or t.startswith("assignment:") for t in c.get("metadata", {}).get("tags", []))]
    assert not tagged, f"cells {tagged} carry a graded assignment: it belongs in assignments/"
    number = path.name[:2]
    if number in ASSIGNMENTS:
        exercises = "\n".join(text for _, text in cells(path, "markdown") if "## Exercises" in text)
        assert "Graded assignment" in exercises
        assert f"{COLAB}/{ASSIGNMENTS[number]}.ipynb" in exercises, "no Open in Colab link to the assignment"
        assert f"assignments/student/{ASSIGNMENTS[number]}.ipynb" in exercises


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_project_history_in_prose_or_code(path):
    text = path.read_text().lower()
    assert not [phrase for phrase in HISTORY if phrase in text]


def test_no_passage_is_repeated_across_chapters():
    problems = repeated_passages(CHAPTERS)
    assert not problems, (f"passages of {REPEAT_WORDS}+ words repeated across chapters (say it once and link "
                          "to it):\n" + "\n".join(problems))


def test_the_repeat_check_catches_a_copied_sentence(tmp_path):
    sentence = ("Each row names the device it ran on, a CPU or a GPU, because a victim trained on a GPU differs "
                "slightly from one trained on a CPU.")
    paths = []
    for name, prose in [("04_a.ipynb", f"Intro. {sentence}"), ("05_b.ipynb", f"{sentence} Outro."),
                        ("06_c.ipynb", "$$\n" + sentence + "\n$$")]:
        notebook = {"cells": [{"cell_type": "markdown", "source": [prose], "metadata": {}}]}
        (tmp_path / name).write_text(json.dumps(notebook))
        paths.append(tmp_path / name)
    problems = repeated_passages(paths)
    assert len(problems) == 1 and problems[0].startswith("04_a.ipynb cell 0 and 05_b.ipynb cell 0")

"""Student copies: solutions removed, exercise text kept, MyST turned into plain Markdown (citations with a
reference list, figures reachable from student/), a first cell with the copy's own Colab badge, outputs
stripped, deterministic files, and `bedkd student-copies --check` catches a stale student/ folder (CI runs it).
A code cell tagged `solution` is an error: graded work lives in assignments/."""
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from bedkd_core import copies, student
from bedkd_core.copies import CopyError

REPO_ROOT = Path(__file__).resolve().parent.parent
COLAB_BASE = "https://colab.research.google.com/github/org/repo/blob/main"

EXERCISE_MD = '''## Exercises

```{exercise} Flip the labels
:label: ex-flip

Implement `flip_labels` so that the DMM learns the flipped mapping.
```

````{solution} ex-flip
:class: dropdown

The answer is THE_SECRET_ANSWER:

```python
[(y + 1) % K for y in labels]
```
````

```{exercise} Another one
:label: ex-two

Explain why.
```
'''

CITING_MD = '''The DMM {cite:p}`gu2017badnets` in one figure:

```{figure} figures/method.svg
:alt: The method

The method, after {cite:t}`gu2017badnets`.
```
'''

GATED_START = "Before the gated solution.\n\n```{solution-start} ex-two\n:class: dropdown\n```\nGATED_SECRET text"
GATED_END = "more GATED_SECRET\n\n```{solution-end}\n```\n\nAfter the gated solution."

BIB = ("@misc{gu2017badnets,\n  title = {{BadNets}},\n  author = {Gu, Tianyu and Garg, Siddharth},\n"
       "  year = {2017},\n}\n")

# Markup that must not survive in any copy: a MyST role, a directive fence, a label target.
LEFTOVER_MYST = re.compile(r"\{cite|\{figure|^\s*(`{3,}|:{3,})\s*\{|(?<!`)\{[\w:-]+\}`|^\s*\([\w-]+\)=\s*$", re.M)


def chapter() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    run = nbformat.v4.new_code_cell("print('hello')", execution_count=3)
    run.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    run.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Chapter 4: the DMM"),
        run,
        nbformat.v4.new_markdown_cell(CITING_MD),
        nbformat.v4.new_markdown_cell(EXERCISE_MD),
        nbformat.v4.new_code_cell("flip_labels([0, 1, 1], 2)"),
        nbformat.v4.new_markdown_cell(GATED_START),
        nbformat.v4.new_code_cell("GATED_SECRET = 42"),
        nbformat.v4.new_markdown_cell(GATED_END),
        nbformat.v4.new_markdown_cell("A whole solution cell: MD_SECRET", metadata={"tags": ["solution"]}),
    ]
    return nb


BIBLIOGRAPHY = {"gu2017badnets": {"type": "misc", "title": "{BadNets}", "author": "Gu, Tianyu and Garg, Siddharth",
                                  "year": "2017"}}


def make_copy(nb, **kwargs):
    return student.make_student_copy(nb, source="chapters/04_dmm.ipynb", bibliography=BIBLIOGRAPHY, **kwargs)


def text_of(nb) -> str:
    return "\n".join(copies.source_text(c) for c in nb["cells"])


def test_solutions_are_removed_and_exercises_kept():
    original = chapter()
    before = json.dumps(original, sort_keys=True)
    copy = make_copy(original)
    assert json.dumps(original, sort_keys=True) == before  # the chapter is not modified
    text = text_of(copy)
    for secret in ("THE_SECRET_ANSWER", "GATED_SECRET", "MD_SECRET"):
        assert secret not in text, secret
    for kept in ("**Exercise 4.1: Flip the labels**", "Implement `flip_labels` so that",
                 "**Exercise 4.2: Another one**", "Explain why.", "# Chapter 4: the DMM", "Before the gated solution.", "After the gated solution.",
                 "flip_labels([0, 1, 1], 2)"):
        assert kept in text, kept
    assert not LEFTOVER_MYST.search(text), LEFTOVER_MYST.search(text)


def test_citations_and_figures_render_without_myst():
    copy = make_copy(chapter())
    cells = [copies.source_text(c) for c in copy["cells"]]
    assert cells[3] == ("The DMM (Gu and Garg, 2017) in one figure:\n\n![The method](../chapters/figures/method.svg)"
                        "\n\n*The method, after Gu and Garg (2017).*")
    assert cells[-1] == "## References\n\n- Gu, T., & Garg, S. (2017). BadNets."
    assert copy["cells"][-1]["id"] == copies.REFERENCES_ID
    online = make_copy(chapter(), assets="https://raw.githubusercontent.com/org/repo/main/")
    url = "https://raw.githubusercontent.com/org/repo/main/chapters/figures/method.svg"
    assert f"![The method]({url})" in text_of(online)


def test_the_first_cell_carries_the_colab_badge_and_the_note():
    copy = make_copy(chapter(), colab=f"{COLAB_BASE}/colab/student/04_dmm.ipynb")
    first = copy["cells"][0]
    assert first["cell_type"] == "markdown" and first["id"] == student.NOTE_ID
    assert first["source"].startswith(f"[![Open In Colab]({student.BADGE})]({COLAB_BASE}/colab/student/04_dmm.ipynb)")
    assert "**Student copy** of `chapters/04_dmm.ipynb`" in first["source"]
    assert copy["cells"][1]["source"] == "# Chapter 4: the DMM"


def test_outputs_execution_data_and_widget_state_are_stripped():
    copy = make_copy(chapter())
    code = [c for c in copy["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None and "execution" not in c["metadata"] for c in code)
    assert "widgets" not in copy["metadata"]
    assert copy["metadata"]["bedkd"] == {"student_copy": True, "source": "chapters/04_dmm.ipynb"}


def test_a_solution_code_cell_is_an_error_that_points_to_the_assignments():
    nb = chapter()
    nb.cells.insert(5, nbformat.v4.new_code_cell("def flip_labels(labels, k):\n    return labels",
                                                 metadata={"tags": ["solution", "assignment:flip_labels"]}))
    with pytest.raises(CopyError, match=r"chapters/04_dmm.ipynb: cell 5 is a code cell tagged `solution`; "
                                        r"graded work lives in the otter notebooks of assignments/"):
        make_copy(nb)


def test_markup_without_a_plain_form_names_the_cell():
    nb = chapter()
    nb.cells[2].source = "See {cite:p}`nobody2020`."
    with pytest.raises(CopyError, match=r"chapters/04_dmm.ipynb: cell 2: \{cite\} key 'nobody2020'"):
        make_copy(nb)


def test_copies_are_deterministic_and_idempotent():
    nb = chapter()  # new_notebook draws random cell ids; the copy of one chapter is always the same
    first = copies.render(make_copy(nb))
    again = copies.render(make_copy(json.loads(json.dumps(nb))))
    assert first == again
    assert first == nbformat.writes(nbformat.reads(first, as_version=4)) + "\n"  # nbformat's own layout
    twice = make_copy(json.loads(first))
    code_cells = lambda nb: [copies.source_text(c) for c in nb["cells"] if c["cell_type"] == "code"]  # noqa: E731
    assert code_cells(twice) == code_cells(json.loads(first))


def scratch_book(root: Path) -> Path:
    (root / "chapters").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: chapters/01_intro\nchapters:\n"
                                   "  - file: chapters/04_dmm\n# - file: chapters/05_akd\n")
    (root / "_config.yml").write_text(yaml.safe_dump({
        "repository": {"url": "https://github.com/org/repo", "branch": "main"},
        "launch_buttons": {"colab_url": "https://colab.research.google.com"},
        "bibtex_bibfiles": ["references.bib"]}))
    (root / "references.bib").write_text(BIB)
    intro = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Intro")])
    nbformat.write(intro, root / "chapters" / "01_intro.ipynb")
    nbformat.write(chapter(), root / "chapters" / "04_dmm.ipynb")
    return root


def test_generate_and_check_detect_drift(tmp_path, capsys):
    root = scratch_book(tmp_path / "book")
    out = root / "student"
    assert student.main(["--root", str(root), "--check"]) == 1
    assert f"{out / '04_dmm.ipynb'}: missing" in capsys.readouterr().err
    assert student.main(["--root", str(root)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["01_intro.ipynb", "04_dmm.ipynb"]
    written = json.loads((out / "04_dmm.ipynb").read_text())
    assert f"({COLAB_BASE}/colab/student/04_dmm.ipynb)" in "".join(written["cells"][0]["source"])
    assert "- Gu, T., & Garg, S. (2017). BadNets." in "".join(written["cells"][-1]["source"])
    capsys.readouterr()
    assert student.main(["--root", str(root), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out

    # the chapter changes: the copy is stale
    nb = nbformat.read(root / "chapters" / "04_dmm.ipynb", as_version=4)
    nb.cells[3].source += "\nA new exercise sentence.\n"
    nbformat.write(nb, root / "chapters" / "04_dmm.ipynb")
    (out / "07_orphan.ipynb").write_text("{}")
    assert student.main(["--root", str(root), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{out / '04_dmm.ipynb'}: differs from the student copy of its chapter" in err
    assert f"{out / '07_orphan.ipynb'}: no chapter of that name in _toc.yml" in err
    assert "01_intro" not in err
    assert student.main(["--root", str(root)]) == 0
    assert not (out / "07_orphan.ipynb").exists()
    assert student.stale_files(root=root) == []


def test_figure_paths_follow_the_output_folder(tmp_path):
    root = scratch_book(tmp_path / "book")
    student.generate(root / "deep" / "er", root=root)
    written = (root / "deep" / "er" / "04_dmm.ipynb").read_text()
    assert "](../../chapters/figures/method.svg)" in written


def test_a_broken_chapter_exits_2(tmp_path, capsys):
    root = scratch_book(tmp_path / "book")
    (root / "chapters" / "04_dmm.ipynb").write_text("{not json")
    assert student.main(["--root", str(root)]) == 2
    assert "04_dmm.ipynb: cannot read the notebook" in capsys.readouterr().err


def test_the_bedkd_command_writes_student_copies(tmp_path, capsys):
    from bedkd_core import cli

    root = scratch_book(tmp_path / "book")
    assert cli.main(["student-copies", "--root", str(root), "--check"]) == 1
    assert cli.main(["student-copies", "--root", str(root), "--out", str(tmp_path / "copies")]) == 0
    assert (tmp_path / "copies" / "04_dmm.ipynb").is_file()


def test_the_committed_student_copies_are_up_to_date():
    problems = student.stale_files(root=REPO_ROOT)
    assert not problems, "student/ is stale; run `bedkd student-copies`:\n" + "\n".join(problems)


STUDENT_COPIES = sorted((REPO_ROOT / "student").glob("*.ipynb"))


@pytest.mark.parametrize("path", STUDENT_COPIES, ids=lambda p: p.name)
def test_each_committed_copy_renders_without_myst_and_opens_in_colab(path):
    nb = json.loads(path.read_text())
    first = copies.source_text(nb["cells"][0])
    colab = copies.colab_url(root=REPO_ROOT, path=f"{student.COLAB_STUDENT}/{path.name}")
    assert first.startswith(f"[![Open In Colab]({student.BADGE})]({colab})"), first
    markdown = [copies.source_text(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    for text in markdown:
        assert not LEFTOVER_MYST.search(text), (path.name, LEFTOVER_MYST.search(text).group())
        assert "<details>" not in text  # no solution, not even collapsed
    images = [url for url in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", "\n".join(markdown)) if url != student.BADGE]
    for image in images:
        assert (path.parent / image).resolve().is_file(), image  # relative to student/
    chapter_text = (REPO_ROOT / "chapters" / path.name).read_text()
    assert len(images) == chapter_text.count("{figure}")
    if "{cite" in chapter_text:
        assert markdown[-1].startswith("## References\n\n- ")

"""Colab copies: MyST becomes plain Markdown (exercises readable, solutions collapsed in <details>), outputs
stripped, a note on top, deterministic files kept in sync by `bedkd colab-copies --check`, and the book's Colab
launch button pointed at them."""
import json
import types
from pathlib import Path

import nbformat
import pytest
import yaml

from bedkd_core import colab_copies, student
from test_student_copies import EXERCISE_MD, chapter, scratch_book

REPO_ROOT = Path(__file__).resolve().parent.parent


def colab_chapter():
    """The student tests' chapter without its gated solution (cells 5-7), which Colab copies refuse."""
    nb = chapter()
    del nb.cells[5:8]
    return nb


def test_exercises_stay_and_solutions_collapse():
    text = colab_copies.to_markdown(EXERCISE_MD, numbers=[0], chapter="4")
    assert "{exercise}" not in text and "{solution}" not in text and ":label:" not in text and ":class:" not in text
    assert "**Exercise 4.1: Flip the labels**\n\nImplement `flip_labels` so that" in text
    assert "**Exercise 4.2: Another one**\n\nExplain why." in text
    solution = text[text.index("<details>"):text.index("</details>")]
    assert "<summary><b>Solution to exercise 4.1</b></summary>" in solution
    assert "THE_SECRET_ANSWER" in solution and "```python\n[(y + 1) % K for y in labels]\n```" in solution


def test_other_directives_labels_and_label_links_become_plain_markdown():
    text = colab_copies.to_markdown("(my-label)=\n## Title\n\nSee [the setup](my-label) and [arXiv](https://x.org)."
                                    "\n\n```{note}\nTwo\n\nlines\n```\n\n:::{admonition} Careful\n:class: tip\n"
                                    "Body\n:::\n", numbers=[0])
    assert text == ("## Title\n\nSee the setup and [arXiv](https://x.org).\n\n> **Note.**\n>\n> Two\n>\n> lines\n\n"
                    "> **Careful.**\n>\n> Body")


def test_gated_solutions_are_refused():
    with pytest.raises(colab_copies.ColabCopyError, match="gated solutions"):
        colab_copies.to_markdown("```{solution-start} ex\n```\nsecret", numbers=[0])


def test_the_copy_strips_outputs_and_notes_its_source(tmp_path):
    original = colab_chapter()
    before = json.dumps(original, sort_keys=True)
    copy = colab_copies.make_colab_copy(original, source="chapters/04_dmm.ipynb", note="> the note")
    assert json.dumps(original, sort_keys=True) == before
    assert copy["cells"][1]["source"] == "> the note"
    code = [c for c in copy["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None and "execution" not in c["metadata"] for c in code)
    assert "widgets" not in copy["metadata"] and copy["metadata"]["accelerator"] == "GPU"
    assert copy["metadata"]["bedkd"] == {"colab_copy": True, "source": "chapters/04_dmm.ipynb"}
    assert all("```{" not in student.source_text(c) for c in copy["cells"] if c["cell_type"] == "markdown")


def book_with_config(root: Path) -> Path:
    scratch_book(root)
    nbformat.write(colab_chapter(), root / "chapters" / "04_dmm.ipynb")
    (root / "_config.yml").write_text(yaml.safe_dump({
        "repository": {"url": "https://github.com/org/repo", "branch": "main"},
        "launch_buttons": {"colab_url": "https://colab.research.google.com"}}))
    return root


def test_generate_check_and_the_timing_note(tmp_path, capsys):
    root = book_with_config(tmp_path / "book")
    assert colab_copies.main(["--root", str(root), "--check"]) == 1
    assert f"{root / 'colab' / '04_dmm.ipynb'}: missing" in capsys.readouterr().err
    assert colab_copies.main(["--root", str(root)]) == 0
    assert sorted(p.relative_to(root / "colab").as_posix() for p in (root / "colab").rglob("*.ipynb")) == [
        "01_intro.ipynb", "04_dmm.ipynb", "student/01_intro.ipynb", "student/04_dmm.ipynb"]
    first = (root / "colab" / "04_dmm.ipynb").read_text()
    assert first == nbformat.writes(nbformat.reads(first, as_version=4)) + "\n"
    note = json.loads(first)["cells"][1]["source"]
    assert "not been timed yet" in "".join(note)
    assert "https://colab.research.google.com/github/org/repo/blob/main/colab/student/04_dmm.ipynb" in "".join(note)
    stubbed = (root / "colab" / "student" / "04_dmm.ipynb").read_text()
    assert "THE_SECRET_ANSWER" in first and "THE_SECRET_ANSWER" not in stubbed and "NotImplementedError" in stubbed
    assert colab_copies.main(["--root", str(root), "--check"]) == 0

    timings = root / colab_copies.TIMINGS
    timings.parent.mkdir(parents=True)
    timings.write_text(json.dumps({"chapters": {"04_dmm": {"seconds": 130.4}}, "threads": 1, "victim_cache": "empty per chapter",
                                   "provenance": {"git_commit": "abcdef1234", "date": "2026-12-01T10:00:00Z"}}))
    capsys.readouterr()
    assert colab_copies.main(["--root", str(root), "--check"]) == 1  # the copies follow the timings file
    assert "04_dmm.ipynb: differs from the Colab copy of its chapter" in capsys.readouterr().err
    colab_copies.generate(root=root)
    note = "".join(json.loads((root / "colab" / "04_dmm.ipynb").read_text())["cells"][1]["source"])
    assert "took about 3 min (130 s) top to bottom on one CPU thread, from an empty cache" in note
    assert "(commit abcdef1, 2026-12-01)" in note


def test_the_bedkd_command_writes_colab_copies(tmp_path):
    from bedkd_core import cli

    root = book_with_config(tmp_path / "book")
    assert cli.main(["colab-copies", "--root", str(root), "--out", str(tmp_path / "copies")]) == 0
    assert (tmp_path / "copies" / "student" / "04_dmm.ipynb").is_file()


def test_the_committed_colab_copies_are_up_to_date():
    problems = colab_copies.stale_files(root=REPO_ROOT)
    assert not problems, "colab/ is stale; run `bedkd colab-copies`:\n" + "\n".join(problems)


def test_the_launch_button_opens_the_colab_copy():
    colab = {"type": "link", "text": "Colab", "tooltip": "Launch on Colab", "icon": "logo_colab.png",
             "url": "https://colab.research.google.com/github/bedkd-book/bedkd-book/blob/main/chapters/04_dmm.ipynb"}
    context = {"header_buttons": [{"type": "group", "label": "launch-buttons", "buttons": [colab]}]}
    app = types.SimpleNamespace(srcdir=str(REPO_ROOT))
    colab_copies.point_launch_buttons(app, "chapters/04_dmm", "page.html", context, None)
    base = "https://colab.research.google.com/github/bedkd-book/bedkd-book/blob/main/colab"
    assert [(b["text"], b["url"]) for b in context["header_buttons"][0]["buttons"]] == [
        ("Colab", f"{base}/04_dmm.ipynb"), ("Colab (student copy)", f"{base}/student/04_dmm.ipynb")]

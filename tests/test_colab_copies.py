"""Colab copies: the chapter in plain Markdown (exercises readable, solutions collapsed in <details>, figures
from raw GitHub), outputs stripped, a note on top, student copies with their own Colab badge, deterministic
files kept in sync by `bedkd colab-copies --check`, and the book's Colab launch button pointed at them."""
import json
import re
import types
from pathlib import Path

import nbformat
import pytest

from bedkd_core import colab_copies, copies, student
from test_student_copies import BIBLIOGRAPHY, LEFTOVER_MYST, chapter, scratch_book

REPO_ROOT = Path(__file__).resolve().parent.parent
RAW = "https://raw.githubusercontent.com/org/repo/main/"
COLAB = "https://colab.research.google.com/github/org/repo/blob/main"


def colab_chapter():
    """The student tests' chapter without its gated solution (cells 5-7), which Colab copies refuse."""
    nb = chapter()
    del nb.cells[5:8]
    return nb


def test_the_copy_notes_its_source_after_the_title():
    original = copies.plain_copy(colab_chapter(), source="chapters/04_dmm.ipynb", assets=RAW,
                                 bibliography=BIBLIOGRAPHY)
    before = json.dumps(original, sort_keys=True)
    copy = colab_copies.make_colab_copy(original, source="chapters/04_dmm.ipynb", note="> the note")
    assert json.dumps(original, sort_keys=True) == before
    assert [copies.source_text(c) for c in copy["cells"][:2]] == ["# Chapter 4: the DMM", "> the note"]
    code = [c for c in copy["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None and "execution" not in c["metadata"] for c in code)
    assert "widgets" not in copy["metadata"] and copy["metadata"]["accelerator"] == "GPU"
    assert copy["metadata"]["bedkd"] == {"colab_copy": True, "source": "chapters/04_dmm.ipynb"}
    text = "\n".join(copies.source_text(c) for c in copy["cells"] if c["cell_type"] == "markdown")
    assert not LEFTOVER_MYST.search(text)
    assert f"![The method]({RAW}chapters/figures/method.svg)" in text and "<details>" in text


def test_in_a_student_copy_the_badge_stays_first():
    copy = student.make_student_copy(colab_chapter(), source="chapters/04_dmm.ipynb", assets=RAW,
                                     bibliography=BIBLIOGRAPHY, colab=f"{COLAB}/colab/student/04_dmm.ipynb")
    copy = colab_copies.make_colab_copy(copy, source="student/04_dmm.ipynb", note="> the note")
    texts = [copies.source_text(c) for c in copy["cells"][:3]]
    assert texts[0].startswith("[![Open In Colab]") and texts[1:] == ["# Chapter 4: the DMM", "> the note"]
    assert copy["metadata"]["bedkd"] == {"student_copy": True, "colab_copy": True, "source": "student/04_dmm.ipynb"}


def test_gated_solutions_are_refused_in_the_full_copy():
    with pytest.raises(copies.CopyError, match="cell 5: gated solutions"):
        copies.plain_copy(chapter(), source="chapters/04_dmm.ipynb", assets=RAW, bibliography=BIBLIOGRAPHY)


def book_with_config(root: Path) -> Path:
    scratch_book(root)
    nbformat.write(colab_chapter(), root / "chapters" / "04_dmm.ipynb")
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
    stripped = json.loads((root / "colab" / "student" / "04_dmm.ipynb").read_text())
    assert "THE_SECRET_ANSWER" in first and "THE_SECRET_ANSWER" not in json.dumps(stripped)
    badge = "".join(stripped["cells"][0]["source"])
    assert badge.startswith(f"[![Open In Colab]({student.BADGE})]({COLAB}/colab/student/04_dmm.ipynb)")
    figure = f"]({RAW}chapters/figures/method.svg)"
    assert figure in first and figure in json.dumps(stripped)
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


COLAB_COPIES = sorted((REPO_ROOT / "colab").rglob("*.ipynb"))


@pytest.mark.parametrize("path", COLAB_COPIES, ids=lambda p: p.relative_to(REPO_ROOT / "colab").as_posix())
def test_each_committed_copy_renders_without_myst_and_links_online_figures(path):
    nb = json.loads(path.read_text())
    markdown = [copies.source_text(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    for text in markdown:
        assert not LEFTOVER_MYST.search(text), (path.name, LEFTOVER_MYST.search(text).group())
    raw = copies.raw_url(root=REPO_ROOT)
    images = [url for url in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", "\n".join(markdown)) if url != student.BADGE]
    assert len(images) == (REPO_ROOT / "chapters" / path.name).read_text().count("{figure}")
    for image in images:
        assert image.startswith(raw) and (REPO_ROOT / image.removeprefix(raw)).is_file(), image
    if path.parent.name == "student":
        own = copies.colab_url(root=REPO_ROOT, path=path.relative_to(REPO_ROOT).as_posix())
        assert markdown[0].startswith(f"[![Open In Colab]({student.BADGE})]({own})"), markdown[0]
        assert not any("<details>" in text for text in markdown)


def test_the_launch_button_opens_the_colab_copy():
    colab = {"type": "link", "text": "Colab", "tooltip": "Launch on Colab", "icon": "logo_colab.png",
             "url": "https://colab.research.google.com/github/bedkd-book/bedkd-book/blob/main/chapters/04_dmm.ipynb"}
    context = {"header_buttons": [{"type": "group", "label": "launch-buttons", "buttons": [colab]}]}
    app = types.SimpleNamespace(srcdir=str(REPO_ROOT))
    colab_copies.point_launch_buttons(app, "chapters/04_dmm", "page.html", context, None)
    base = "https://colab.research.google.com/github/bedkd-book/bedkd-book/blob/main/colab"
    assert [(b["text"], b["url"]) for b in context["header_buttons"][0]["buttons"]] == [
        ("Colab", f"{base}/04_dmm.ipynb"), ("Colab (student copy)", f"{base}/student/04_dmm.ipynb")]

"""The teacher's guide's timing block: written from the benchmark files, and kept in sync with them."""
import json

import pytest

from bedkd_core import course, store
from bedkd_core.data import DataError


def test_the_guide_shows_the_measured_times():
    assert not course.write_guide_times(check=True), "run `python -m bedkd_core.course` and commit the guide"


def _write(root, name, payload):
    path = root / "benchmarks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


PROVENANCE = {"git_commit": "0123456789abcdef", "device": "cpu (x86_64, 2 cores, 2 threads)",
              "date": "2026-12-01T00:00:00Z"}


def test_times_come_from_the_files_and_the_estimate_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    assert course.times_markdown().startswith("No chapter timing")
    _write(tmp_path, "colab.json", {"chapters": {"01_preface": {"seconds": 30.0, "ok": True},
                                                 "05_akd": {"seconds": 630.0, "ok": False}},
                                    "backbone": "minilm", "threads": 1, "provenance": PROVENANCE})
    text = course.times_markdown()
    assert "| 05_akd | 10.5 min (failed) | — |" in text  # no GPU pair stored: no estimate
    _write(tmp_path, "chapter-times.json", {"chapters": {"01_preface": {"seconds": 20.0, "ok": True}},
                                            "backbone": "minilm", "threads": 2, "provenance": PROVENANCE})
    assert "| 01_preface | 20 s |" in course.times_markdown()  # the 2-thread run wins
    for defense, seconds, device in (("none", 1000.0, "cpu (x86_64)"), ("bedkd-fixed", 10.0, "NVIDIA H200")):
        cell = store.cell_dir(grid="paper", dataset="sst2", attack="badnets", defense=defense, root=tmp_path)
        cell.mkdir(parents=True)
        (cell / "report.json").write_text(json.dumps({"seconds": {"victim": seconds},
                                                      "provenance": {"device": device}}))
    text = course.times_markdown()
    scale = course.T4_SLOWDOWN * course.COLAB_MODEL_COST / 100
    assert f"| 01_preface | 20 s | ≈ {course._minutes(20.0)} |" in text
    assert "Estimated, not measured" in text and "100×" in text
    _write(tmp_path, "colab.json", {})
    (tmp_path / "benchmarks" / "chapter-times.json").write_text(json.dumps(
        {"chapters": {"01_preface": {"seconds": 20.0, "ok": True}, "02_x": {"seconds": 320.0, "ok": True}},
         "backbone": "minilm", "threads": 2, "provenance": PROVENANCE}))
    assert f"| 02_x | 5.3 min | ≈ {course._minutes(20.0 + 300.0 * scale)} |" in course.times_markdown()


def test_a_guide_without_the_block_is_an_error_that_names_the_markers(tmp_path):
    page = tmp_path / "guide.md"
    page.write_text("# Guide\n")
    with pytest.raises(DataError, match="course-times:start"):
        course.write_guide_times(guide=page)

"""The standard setup cell: every chapter starts with it; in Colab it clones the book at its branch and hands over to
`bedkd_core.colab.setup` (tested in test_colab.py). Shell commands are recorded here, not run; test_colab_sim.py
runs the cell for real in a Colab-like environment."""
import json
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import jupytext
import pytest
import yaml
from IPython.core import interactiveshell
from IPython.core.interactiveshell import InteractiveShell
from sphinx_external_toc.parsing import parse_toc_yaml
from traitlets.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_CELL = (REPO_ROOT / "chapters" / "_setup_cell.py").read_text().rstrip("\n")
SETUP_VARIABLES = ("BEDKD_BOOK_DIR", "BEDKD_MODEL", "BEDKD_DATA", "BEDKD_SCALE")


def chapter_sources() -> list[Path]:
    """The notebook (.ipynb, else MyST .md) of every chapter (chapters/NN_name) in _toc.yml that exists, in order.

    Back-matter pages without a chapter number (notation, bibliography) run no code and carry no setup cell.
    """
    sources = []
    for docname in parse_toc_yaml(REPO_ROOT / "_toc.yml"):
        if not re.match(r"\d+_", Path(docname).name):
            continue
        for suffix in (".ipynb", ".md"):
            if (REPO_ROOT / f"{docname}{suffix}").exists():
                sources.append(REPO_ROOT / f"{docname}{suffix}")
                break
    return sources


@pytest.mark.parametrize("source", chapter_sources(), ids=lambda path: path.stem)
def test_chapter_starts_with_setup_cell(source):
    notebook = jupytext.read(source)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, f"{source.name} has no code cell"
    assert code_cells[0].source.rstrip("\n") == SETUP_CELL, (
        f"the first code cell of {source.name} differs from chapters/_setup_cell.py; paste that file's text"
    )


def test_setup_cell_clones_the_configured_repository_and_branch():
    """The one place of the URL and branch is _config.yml (the launch buttons use it); the cell, which in Colab
    cannot read that file, carries a copy that this test keeps equal."""
    repository = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]
    assert re.search(rf'^REPO_URL = "{re.escape(repository["url"])}"$', SETUP_CELL, re.MULTILINE)
    assert re.search(rf'^REPO_REF = "{re.escape(repository["branch"])}"$', SETUP_CELL, re.MULTILINE)


COLAB_KEEPS = ("torch", "numpy", "pandas", "ipywidgets")
"""What the Colab install must leave alone: replacing them there needs a runtime restart or breaks the widgets."""


def test_colab_install_keeps_torch_numpy_pandas_and_ipywidgets(tmp_path):
    """pip, installing the checkout into an env that has them (as Colab has), installs none of them again."""
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report, f"{REPO_ROOT}[offline]"],
        check=True,
    )
    to_install = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert not to_install & set(COLAB_KEEPS), f"pip would reinstall: {sorted(to_install)}"


def test_pyproject_accepts_colabs_ipywidgets():
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wanted = {Requirement(r).name: Requirement(r).specifier for r in pyproject["project"]["dependencies"]}
    assert "7.7.1" in wanted["ipywidgets"] and "8.1.9" in wanted["ipywidgets"]


@pytest.fixture
def shell(monkeypatch, tmp_path):
    """The cell's shell commands (`!cmd`, `x = !cmd`) recorded, not run, and `colab.setup` recorded, not run.

    `clone_works` says whether the recorded `git clone` makes its target folder."""
    from bedkd_core import colab

    record = types.SimpleNamespace(commands=[], setups=[], clone_works=True, book_dir=tmp_path / "bedkd-book")

    def getoutput(cmd):
        record.commands.append(cmd)
        if record.clone_works:
            record.book_dir.mkdir()
            return ""
        return "fatal: unable to access 'https://github.com/bedkd-book/bedkd-book/': Could not resolve host"

    monkeypatch.setattr(interactiveshell, "system", lambda cmd: record.commands.append(cmd) or 0)
    monkeypatch.setattr(interactiveshell, "getoutput", getoutput)
    monkeypatch.setattr(colab, "setup", lambda *, book_dir: record.setups.append(book_dir))
    for name in SETUP_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)  # restored (unset) after the test, also if the cell sets it
    monkeypatch.setenv("BEDKD_BOOK_DIR", str(record.book_dir))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return record


def run_setup_cell():
    """Run the setup cell in a fresh IPython shell; its result and user namespace."""
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell(config=config)
    return shell.run_cell(SETUP_CELL), shell.user_ns


@pytest.fixture
def in_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))


def test_setup_cell_in_colab_clones_then_hands_over(in_colab, shell, capsys):
    result, namespace = run_setup_cell()
    result.raise_error()
    book_dir = str(shell.book_dir)
    assert shell.commands == [f"git clone -q --depth 1 -b main https://github.com/bedkd-book/bedkd-book {book_dir} 2>&1"]
    assert shell.setups == [book_dir] and sys.path[0] == book_dir
    assert namespace["SCALE"] == "quick" and "BEDKD_SCALE=quick" in capsys.readouterr().out


def test_setup_cell_rerun_clones_nothing(in_colab, shell):
    shell.book_dir.mkdir()
    for _ in range(2):
        run_setup_cell()[0].raise_error()
    assert shell.commands == [] and shell.setups == [str(shell.book_dir)] * 2
    assert sys.path.count(str(shell.book_dir)) == 1


def test_setup_cell_without_network_stops_with_one_line(in_colab, shell, capsys):
    shell.clone_works = False
    result, namespace = run_setup_cell()
    assert result.error_in_exec is not None and "SCALE" not in namespace and shell.setups == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("UsageError: could not clone https://github.com/bedkd-book/bedkd-book (fatal: unable")
    assert err.endswith("connect to the internet and run this cell again")


def test_setup_cell_outside_colab_only_reads_the_scale(shell, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv("BEDKD_SCALE", "full")
    result, namespace = run_setup_cell()
    result.raise_error()
    assert shell.commands == [] and shell.setups == []
    assert "BEDKD_MODEL" not in os.environ and "BEDKD_DATA" not in os.environ
    assert namespace["SCALE"] == "full"
    assert capsys.readouterr().out.strip() == "BEDKD_SCALE=full"

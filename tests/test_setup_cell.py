"""The standard setup cell: every chapter starts with it, and in Colab it installs bedkd_core without touching torch."""
import importlib.metadata
import json
import os
import re
import subprocess
import sys
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
SETUP_VARIABLES = ("BEDKD_INSTALL_SOURCE", "BEDKD_MODEL", "BEDKD_DATA", "BEDKD_SCALE")


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


def test_setup_cell_installs_from_the_configured_repository():
    repository = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]
    assert re.search(rf'^REPO_URL = "{re.escape(repository["url"])}"$', SETUP_CELL, re.MULTILINE)
    assert f"@ git+{{REPO_URL}}@{repository['branch']}\"" in SETUP_CELL


def test_colab_install_keeps_torch(tmp_path):
    """pip, installing the checkout into an env that has torch (as Colab has), installs no torch."""
    assert importlib.metadata.version("torch")
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report, f"{REPO_ROOT}[offline]"],
        check=True,
    )
    to_install = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "torch" not in to_install, f"pip would reinstall torch: {sorted(to_install)}"


@pytest.fixture
def shell_commands(monkeypatch):
    """Shell commands the cell runs (`!cmd` and `%pip`), recorded after IPython expands them, not run."""
    commands = []
    monkeypatch.setattr(interactiveshell, "system", lambda cmd: commands.append(cmd) or 0)
    for name in SETUP_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)  # restored (unset) after the test, also if the cell sets it
    return commands


def run_setup_cell():
    """Run the setup cell in a fresh IPython shell; its user namespace."""
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell(config=config)
    result = shell.run_cell(SETUP_CELL)
    result.raise_error()
    return shell.user_ns


@pytest.fixture
def in_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))


def test_setup_cell_in_colab(in_colab, shell_commands, capsys):
    namespace = run_setup_cell()
    pip, download = shell_commands
    assert pip.endswith('-m pip install -q "bedkd_core[offline] @ git+https://github.com/bedkd-book/bedkd-book@main"')
    assert download == 'bedkd download --to "/content/bedkd_data"'
    assert os.environ["BEDKD_MODEL"] == "bert-base-uncased"
    assert os.environ["BEDKD_DATA"] == "/content/bedkd_data"
    assert namespace["SCALE"] == "quick"
    assert "BEDKD_SCALE=quick" in capsys.readouterr().out


def test_setup_cell_in_colab_keeps_overrides(in_colab, shell_commands, monkeypatch):
    monkeypatch.setenv("BEDKD_INSTALL_SOURCE", "/content/bedkd-book[offline]")
    monkeypatch.setenv("BEDKD_MODEL", "minilm")
    monkeypatch.setenv("BEDKD_DATA", "/content/my data")
    monkeypatch.setenv("BEDKD_SCALE", "full")
    namespace = run_setup_cell()
    pip, download = shell_commands
    assert pip.endswith('-m pip install -q "/content/bedkd-book[offline]"')
    assert download == 'bedkd download --to "/content/my data"'
    assert os.environ["BEDKD_MODEL"] == "minilm"
    assert namespace["SCALE"] == "full"


def test_setup_cell_outside_colab_only_reads_the_scale(shell_commands, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv("BEDKD_SCALE", "full")
    namespace = run_setup_cell()
    assert shell_commands == []
    assert "BEDKD_MODEL" not in os.environ and "BEDKD_DATA" not in os.environ
    assert namespace["SCALE"] == "full"
    assert capsys.readouterr().out.strip() == "BEDKD_SCALE=full"

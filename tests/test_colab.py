"""bedkd_core.colab, the Colab half of the setup cell: install once, the Colab defaults, data fetched only when
missing, and every failure as one line without a traceback (what IPython shows, checked in a real shell)."""
import json
import os
import subprocess
import types

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from bedkd_core import colab, download
from bedkd_core.data import load_manifest


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("BEDKD_MODEL", "BEDKD_DATA"):  # set first, so teardown also undoes what setup() sets
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


@pytest.fixture
def pip_runs(monkeypatch):
    """pip commands recorded and answered with `pip_runs.returncode` / `pip_runs.stderr` instead of run."""
    record = types.SimpleNamespace(commands=[], returncode=0, stderr="")

    def run(command, **kwargs):
        record.commands.append(command)
        return subprocess.CompletedProcess(command, record.returncode, "", record.stderr)

    monkeypatch.setattr(colab.subprocess, "run", run)
    return record


def fake_distribution(monkeypatch, direct_url):
    dist = types.SimpleNamespace(read_text=lambda name: json.dumps(direct_url) if name == "direct_url.json" else None)
    egg_info = types.SimpleNamespace(read_text=lambda name: None)  # the clone's egg-info, found first on sys.path
    monkeypatch.setattr(colab.importlib.metadata, "distributions", lambda name: [egg_info, dist])


def test_install_runs_pip_editable_once(monkeypatch, pip_runs, tmp_path):
    book = tmp_path / "bedkd-book"
    book.mkdir()
    fake_distribution(monkeypatch, {"url": "file:///elsewhere", "dir_info": {"editable": True}})
    assert colab.install(book_dir=book) is True
    assert pip_runs.commands[0][-3:] == ["-q", "-e", f"{book}[offline]"]
    fake_distribution(monkeypatch, {"url": book.resolve().as_uri(), "dir_info": {"editable": True}})
    assert colab.install(book_dir=book) is False and len(pip_runs.commands) == 1  # a rerun installs nothing


def test_a_failed_pip_install_is_one_line(monkeypatch, pip_runs, tmp_path):
    fake_distribution(monkeypatch, {})
    pip_runs.returncode = 1
    pip_runs.stderr = ("WARNING: Retrying ...\nERROR: Could not find a version that satisfies the requirement "
                       "setuptools>=61\nERROR: No matching distribution found for setuptools>=61\n")
    with pytest.raises(colab.SetupError) as caught:
        colab.install(book_dir=tmp_path)
    message = str(caught.value)
    assert "No matching distribution found for setuptools>=61" in message and colab.RETRY in message
    assert caught.value._render_traceback_() == [f"Setup stopped: {message}"]


def test_fetch_data_downloads_nothing_when_the_files_verify(monkeypatch, tmp_path):
    """With every manifest file present and verified, not one URL is fetched (and nothing written)."""
    for entry in load_manifest():
        path = tmp_path / entry["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    monkeypatch.setattr(download, "sha256_of", lambda path: next(
        e["sha256"] for e in load_manifest() if (tmp_path / e["file"]) == path))
    monkeypatch.setattr(download, "fetch_url", lambda url: pytest.fail(f"fetched {url}"))
    assert colab.fetch_data(to=tmp_path) == []


def test_fetch_data_without_network_is_one_line(monkeypatch, tmp_path):
    def offline(url):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download, "fetch_url", offline)
    with pytest.raises(colab.SetupError) as caught:
        colab.fetch_data(to=tmp_path / "data")
    message = str(caught.value)
    assert message.startswith(f"the data is missing from {tmp_path / 'data'} (sst2/")
    assert "name resolution" in message and colab.RETRY in message and "BEDKD_DATA" in message
    assert "\n" not in message


def test_setup_sets_the_colab_defaults_and_keeps_overrides(monkeypatch, clean_env, tmp_path, capsys):
    monkeypatch.setattr(colab, "install", lambda *, book_dir: False)
    fetched = []
    monkeypatch.setattr(colab, "fetch_data", lambda *, to: fetched.append(to) or [])
    summary = colab.setup(book_dir=tmp_path)
    assert os.environ["BEDKD_MODEL"] == "bert-base-uncased" and os.environ["BEDKD_DATA"] == "/content/bedkd_data"
    assert fetched == ["/content/bedkd_data"]
    assert summary == (f"bedkd_core from {tmp_path} (already installed); data in /content/bedkd_data (verified, "
                       "nothing to download); model bert-base-uncased, trained on the CPU in fp32")
    assert capsys.readouterr().out.strip() == summary
    monkeypatch.setenv("BEDKD_MODEL", "minilm")
    monkeypatch.setenv("BEDKD_DATA", str(tmp_path / "mine"))
    colab.setup(book_dir=tmp_path)
    assert os.environ["BEDKD_MODEL"] == "minilm" and fetched[-1] == str(tmp_path / "mine")


def test_ipython_shows_a_setup_error_as_one_line(monkeypatch, capsys):
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell(config=config)
    shell.user_ns["colab"] = colab
    result = shell.run_cell('raise colab.SetupError("the data is missing from /content/bedkd_data (...)")')
    assert isinstance(result.error_in_exec, colab.SetupError)
    out = capsys.readouterr()
    shown = (out.out + out.err).strip()
    assert shown == "Setup stopped: the data is missing from /content/bedkd_data (...)"

"""The chapters' setup in Colab, after the first cell has cloned the book's repository: install, model, data.

`setup(book_dir=...)` installs the clone editable (pip keeps Colab's torch, numpy, pandas and ipywidgets: the
package asks for ranges they satisfy), picks the Colab defaults for the model and the data folder, and downloads
only the data files that are missing or fail their sha256. Run twice, it installs and downloads nothing. What
goes wrong stops the cell with one line saying what is missing and what to do (`SetupError`), not a traceback.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

COLAB_MODEL = "bert-base-uncased"
COLAB_DATA = "/content/bedkd_data"
RETRY = "check that the runtime is connected to the internet and run this cell again"


class SetupError(Exception):
    """A setup step failed; IPython shows the message as one line, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"Setup stopped: {self}"]


def installed_from(book_dir: str | Path) -> bool:
    """Whether bedkd_core is already installed editable from `book_dir`."""
    for dist in importlib.metadata.distributions(name="bedkd_core"):  # the clone's own egg-info may come first
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        if info.get("dir_info", {}).get("editable", False) and info.get("url") == Path(book_dir).resolve().as_uri():
            return True
    return False


def install(*, book_dir: str | Path) -> bool:
    """`pip install -e book_dir[offline]` unless already done; whether pip ran."""
    if installed_from(book_dir):
        return False
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{book_dir}[offline]"],
                          capture_output=True, text=True)
    if done.returncode:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        reason = errors[-1] if errors else f"exit code {done.returncode}"
        raise SetupError(f"pip could not install bedkd_core from {book_dir} ({reason}); {RETRY}")
    return True


def fetch_data(*, to: str | Path) -> list[Path]:
    """Download the data files that `to` lacks or holds corrupted; the files written."""
    from .data import DataError
    from .download import download

    try:
        return download(to=Path(to))
    except DataError as err:
        reason = str(err).split("; ")[0]
        raise SetupError(f"the data is missing from {to} ({reason}); {RETRY}, or upload a folder holding "
                         "sst2/, olid/ and agnews/ and set BEDKD_DATA to it") from None


def setup(*, book_dir: str | Path) -> str:
    """Install, set BEDKD_MODEL and BEDKD_DATA (unless set), fetch the data; print and return a summary line."""
    pip_ran = install(book_dir=book_dir)
    model = os.environ.setdefault("BEDKD_MODEL", COLAB_MODEL)
    data_dir = os.environ.setdefault("BEDKD_DATA", COLAB_DATA)
    written = fetch_data(to=data_dir)
    import torch

    from .models import device
    from .training import precision

    where = f"the GPU ({torch.cuda.get_device_name()})" if device().type == "cuda" else "the CPU"
    summary = (f"bedkd_core from {book_dir} ({'installed' if pip_ran else 'already installed'}); data in "
               f"{data_dir} ({f'{len(written)} files downloaded' if written else 'verified, nothing to download'}); "
               f"model {model}, trained on {where} in {precision()}")
    print(summary)
    return summary

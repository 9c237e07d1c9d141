"""Progress bars that a book build can turn off: tqdm.auto, unless $TQDM_DISABLE is set (tqdm itself ignores it)."""
from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    """tqdm.auto.tqdm(iterable, **kwargs), disabled when $TQDM_DISABLE is set to anything but "" or "0"."""
    if os.environ.get("TQDM_DISABLE", "") not in ("", "0"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)

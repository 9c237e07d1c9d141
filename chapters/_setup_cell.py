# Setup, the same in every chapter. In Colab it clones the book's repository
# (code, grids, results) at the book's branch, installs bedkd_core from it
# and downloads the data; elsewhere it only reads the scale (quick or full).
import os
import sys

REPO_URL = "https://github.com/bedkd-book/bedkd-book"
REPO_REF = "main"
if "google.colab" in sys.modules:
    BOOK_DIR = os.environ.get("BEDKD_BOOK_DIR", "/content/bedkd-book")
    if not os.path.isdir(BOOK_DIR):
        git = !git clone -q --depth 1 -b {REPO_REF} {REPO_URL} {BOOK_DIR} 2>&1
        if not os.path.isdir(BOOK_DIR):
            from IPython.core.error import UsageError  # one line, no traceback
            raise UsageError(f"could not clone {REPO_URL} ({' '.join(git)}); "
                             "connect to the internet and run this cell again")
    if BOOK_DIR not in sys.path:  # this kernel imports bedkd_core from there
        sys.path.insert(0, BOOK_DIR)
    from bedkd_core import colab
    colab.setup(book_dir=BOOK_DIR)
SCALE = os.environ.get("BEDKD_SCALE", "quick")
print(f"BEDKD_SCALE={SCALE}")

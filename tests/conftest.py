"""Shared test setup: offline hub, the shared data root, and one victim cache for the whole session."""
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("BEDKD_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("BEDKD_CACHE", str(Path.home() / ".cache" / "bedkd-tests"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def sst2():
    from bedkd_core.data import load_task

    return load_task("sst2")


@pytest.fixture(scope="session")
def quick_badnets():
    """The quick SST-2 BadNets cell, prepared once per session (the victim comes from the shared cache)."""
    from bedkd_core.attacks import AttackConfig
    from bedkd_core.experiments import prepare

    return prepare(dataset="sst2", attack=AttackConfig(name="badnets"), scale="quick", seed=0)

"""The caches' keys and files: where they live, hashes of data, weights and settings, atomic array saves."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from .store import atomic_file


def cache_dir() -> Path:
    """Where victims live: $BEDKD_CACHE, else ~/.cache/bedkd (never inside the repository)."""
    return Path(os.environ.get("BEDKD_CACHE", Path.home() / ".cache" / "bedkd")).expanduser()


def fingerprint(data: Dataset) -> str:
    """A hash of a dataset's texts and labels, so a changed file can never reuse a stale victim."""
    digest = hashlib.sha256()
    for text, label in zip(data["text"], data["label"]):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every tensor in a model's state dict, so a cache keyed by it follows the exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_arrays_atomic(path: Path, arrays: np.ndarray | dict[str, np.ndarray]) -> None:
    """Save one array (.npy) or several (.npz) at `path` atomically: a killed run never leaves half a file there."""
    with atomic_file(path, "wb") as handle:
        if isinstance(arrays, dict):
            np.savez(handle, **arrays)
        else:
            np.save(handle, arrays)


def cache_key(payload: dict) -> str:
    """A short hash of a JSON-able payload: the name of the cache entry it describes."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


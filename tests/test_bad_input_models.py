"""Bad model files and cache entries: each is a clear error before any work, never a silently wrong model.
Tiny 2-layer BERTs in tmp_path; nothing is really trained (fast)."""
import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file

from bedkd_core import victim as victim_mod
from bedkd_core.data import DataError
from bedkd_core.metrics import evaluate
from bedkd_core.models import load_classifier
from bedkd_core.victim import VictimConfig, get_victim

VOCAB = 11
"""The tiny models' vocabulary size (conftest.tiny_model)."""


def tiny_rows(n=8):
    return Dataset.from_dict({"text": [["a fine film", "dull and long"][i % 2] for i in range(n)],
                              "label": [1 - i % 2 for i in range(n)]})


@pytest.fixture
def cached_victim(tmp_path, monkeypatch, tiny_model):
    """get_victim on a tiny backbone with training stubbed: (the call that reuses it, the victim it saved)."""
    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(victim_mod, "train_classifier", lambda *a, **k: None)
    backbone = tiny_model(tmp_path / "backbone", backbone=True)
    config = VictimConfig(model=str(backbone), epochs=1)

    def get():
        return get_victim(train=tiny_rows(), num_labels=2, config=config, describe={"dataset": "tiny"})

    return get, get()


def _overwrite_middle(path, size):
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start:start + size] = os.urandom(size)
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- item 1: a damaged cache entry

def test_a_saved_victim_records_the_sha256_of_its_files_and_is_reused_when_they_match(cached_victim):
    get, first = cached_victim
    meta = json.loads((first.path / "bedkd.json").read_text())
    assert set(meta["digests"]) >= {"model.safetensors", "config.json"}
    again = get()
    assert again.from_cache and again.path == first.path


@pytest.mark.parametrize("damage", ["random bytes in the middle", "truncated"])
def test_a_damaged_cached_victim_is_refused_naming_the_folder_to_delete(cached_victim, damage):
    get, first = cached_victim
    weights = first.path / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        _overwrite_middle(weights, 4096)
    with pytest.raises(DataError, match=f"cache entry {first.path}: the sha256 of model.safetensors differs.*"
                                        "delete that folder and run again to retrain it"):
        get()


def test_an_older_cache_entry_without_digests_is_loaded_then_gets_them(cached_victim):
    get, first = cached_victim
    meta_path = first.path / "bedkd.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "digests"}))
    again = get()
    assert again.from_cache and json.loads(meta_path.read_text())["digests"] == meta["digests"]


def test_an_older_cache_entry_that_cannot_be_loaded_is_refused_naming_the_folder(cached_victim):
    get, first = cached_victim
    meta_path = first.path / "bedkd.json"
    meta_path.write_text(json.dumps({k: v for k, v in json.loads(meta_path.read_text()).items() if k != "digests"}))
    weights = first.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"cache entry {first.path}: its weights cannot be read.*delete that folder"):
        get()


def test_cached_test_predictions_follow_the_weights_not_only_the_texts(tmp_path, tiny_model):
    model, tokenizer = load_classifier(str(tiny_model(tmp_path / "clf")), num_labels=2)
    clean = Dataset.from_dict({"text": ["a fine film", "dull and long"], "label": [1, 1]})
    triggered = Dataset.from_dict({"text": ["cf a fine film", "cf dull"], "label": [1, 1], "source_label": [0, 0]})
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([10.0, -10.0]))  # always class 0
    first = evaluate(model, tokenizer, clean_test=clean, triggered_test=triggered, target_label=1, cache=tmp_path)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([-10.0, 10.0]))  # other weights: always class 1
    second = evaluate(model, tokenizer, clean_test=clean, triggered_test=triggered, target_label=1, cache=tmp_path)
    assert (first["cacc"], second["cacc"]) == (0.0, 1.0) and (first["asr"], second["asr"]) == (0.0, 1.0)


def test_a_damaged_cached_dmm_is_refused(tmp_path, monkeypatch, tiny_model):
    from bedkd_core.defenses import bedkd as bk

    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path / "cache"))
    teacher, tokenizer = load_classifier(str(tiny_model(tmp_path / "clf")), num_labels=2)
    monkeypatch.setattr(bk, "_distill_step", lambda *a, **k: 0.0)
    config = bk.make_config(preset="quick", dmm_epochs=1, batch_size=4)
    bk.train_dmm(teacher, tokenizer, tiny_rows(), num_classes=2, config=config)
    folder = bk.dmm_cache_path(teacher, tiny_rows(), num_classes=2, config=config)
    _, from_cache = bk._dmm_and_cache_hit(teacher, tokenizer, tiny_rows(), num_classes=2, config=config, cache=True)
    assert from_cache
    _overwrite_middle(folder / "model.safetensors", 2048)
    with pytest.raises(DataError, match=f"cache entry {folder}: the sha256 of model.safetensors differs"):
        bk._dmm_and_cache_hit(teacher, tokenizer, tiny_rows(), num_classes=2, config=config, cache=True)


# ---------------------------------------------------------------- item 2: weights that do not fit the model

def _rewrite_weights(folder, change):
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(change(tensors), str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_a_plain_backbone_gets_a_new_head_and_unused_pretraining_weights_are_ignored(tmp_path, tiny_model):
    folder = tiny_model(tmp_path / "backbone", backbone=True)
    _rewrite_weights(folder, lambda t: {**t, "cls.predictions.bias": torch.zeros(VOCAB)})  # as bert-base has
    model, _ = load_classifier(str(folder), num_labels=3)
    assert model.config.num_labels == 3
    with pytest.raises(DataError, match="2 of the model's .* weights are missing from its files \\(such as "
                                        "classifier.bias\\)"):
        load_classifier(str(folder), num_labels=3, new_head=False)  # a classifier to defend needs its head


@pytest.mark.parametrize("change, message", [
    (lambda t: {"foo": torch.zeros(2)},
     "39 of the model's 41 weights are missing from its files \\(such as bert.embeddings.LayerNorm.bias\\), so they "
     "would start random; "
     "give a folder whose weights match its config.json"),
    (lambda t: {k: v for k, v in t.items() if ".layer.1." not in k}, "16 of the model's 41 weights are missing"),
    (lambda t: {**t, "bert.encoder.layer.2.output.dense.bias": torch.zeros(32)},
     "its files hold 1 backbone weights for parts its config lacks \\(such as bert.encoder.layer.2.output.dense.bias"),
    (lambda t: {**t, "bert.embeddings.word_embeddings.weight": torch.zeros(60, 32)},
     "weight bert.embeddings.word_embeddings.weight has shape \\(60, 32\\) in the files but \\(11, 32\\) in its config; "
     "give the config.json the weights were saved with"),
])
def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, change, message, tiny_model):
    folder = tiny_model(tmp_path / "clf")
    _rewrite_weights(folder, change)
    with pytest.raises(DataError, match=f"{folder}: {message}"):
        load_classifier(str(folder), num_labels=2)


def test_a_classifier_for_another_label_count_is_refused(tmp_path, tiny_model):
    folder = tiny_model(tmp_path / "clf3", num_labels=3)
    with pytest.raises(DataError, match="its classifier head has 3 labels but the data has 2 classes; use a backbone "
                                        "or a classifier trained for 2 classes"):
        load_classifier(str(folder), num_labels=2)
    assert load_classifier(str(folder), num_labels=3, new_head=False)[0].config.num_labels == 3


def test_a_truncated_weights_file_is_a_clear_error(tmp_path, tiny_model):
    folder = tiny_model(tmp_path / "clf")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(DataError, match="its weights cannot be read .*truncated or damaged"):
        load_classifier(str(folder), num_labels=2)


@pytest.mark.parametrize("model, message", [
    ("holding none of its weights", "39 of the model's 41 weights are missing from its files"),
    ("a 3-label classifier", "its classifier head has 3 labels but the data has 2 classes"),
])
def test_run_with_a_model_that_does_not_fit_exits_2_before_training(tmp_path, monkeypatch, capsys, tiny_model,
                                                                     model, message):
    from bedkd_core import cli

    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(victim_mod, "train_classifier", lambda *a, **k: pytest.fail("trained a broken model"))
    folder = tiny_model(tmp_path / "model", backbone=model != "a 3-label classifier", num_labels=3)
    if model == "holding none of its weights":
        _rewrite_weights(folder, lambda t: {"foo": torch.zeros(2)})
    assert cli.main(["run", "--dataset", "sst2", "--attack", "badnets", "--model", str(folder),
                     "--out", str(tmp_path / "out")]) == 2
    assert f"bedkd: error: {folder}: {message}" in capsys.readouterr().err


def test_the_half_precision_copy_keeps_loading(tmp_path, tiny_model):
    from bedkd_core.models import save_half_precision_copy

    source = tiny_model(tmp_path / "clf")
    copy = save_half_precision_copy(source=source, folder=tmp_path / "half")
    model, _ = load_classifier(str(copy), num_labels=2)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.isfinite(model.classifier.weight.detach().numpy()).all()

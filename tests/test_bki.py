"""BKI: keyword scoring on a stand-in model (fast), then the trigger words and the dropped rows on the cached
quick SST-2 BadNets victim (slow)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset

from bedkd_core.data import DataError
from bedkd_core.defenses import DEFENSES, make_defense_config
from bedkd_core.defenses import bki as bki_mod
from bedkd_core.defenses.base import DefenderData

TRIGGERS = {"cf", "mn", "bb", "tq"}


def _stand_in(texts, **kwargs):
    """forward_batches of a model whose [CLS] state and prediction move only with the trigger words `cf`, `mn`."""
    hidden = torch.zeros(len(texts), 3, 4)
    for i, text in enumerate(texts):
        words = text.split()
        hidden[i, 0] = torch.tensor([4.0 * words.count("cf"), 3.0 * words.count("mn"), 0.1 * len(words), 0.0])
    logits = torch.stack([hidden[:, 0, 2], hidden[:, 0, 0] + hidden[:, 0, 1]], dim=1)
    yield list(range(len(texts))), logits, (hidden, torch.ones(len(texts), 3))


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(bki_mod, "forward_batches", lambda model, tokenizer, texts, **kw: _stand_in(texts, **kw))
    return SimpleNamespace(model=None, tokenizer=None, config=None)


def _suspect():
    clean = [f"a plain sentence number {i} about film" for i in range(40)]
    poisoned = [f"a cf sentence {i}" for i in range(20)] + [f"mn the film {i}" for i in range(15)]
    return Dataset.from_dict({"text": clean + poisoned, "label": [i % 2 for i in range(40)] + [1] * 35})


def test_word_importance_is_the_change_when_the_word_is_deleted(stand_in):
    config = make_defense_config("bki", scale="full")
    (row,) = bki_mod.word_importance(model=None, tokenizer=None, texts=["x cf y"], config=config)
    assert row == pytest.approx({"x": 0.1, "cf": 4.0, "y": 0.1})  # L∞ change of the [CLS] state
    prob = make_defense_config("bki", scale="full", importance="prob")
    (row,) = bki_mod.word_importance(model=None, tokenizer=None, texts=["x cf y"], config=prob)
    assert row["cf"] > 0.5 > 0.01 > row["x"]  # deleting cf flips the prediction, deleting x barely moves it
    (row,) = bki_mod.word_importance(model=None, tokenizer=None, texts=["a b c d e f g"],
                                     config=make_defense_config("bki", scale="full", max_words=3))
    assert len(row) == 3  # a long row gets a sample of its positions


def test_keyword_score_is_mean_importance_times_log_frequency():
    rows = [{"cf": 4.0, "a": 0.2}, {"cf": 2.0, "b": 0.1}, {"c": 0.5, "a": 0.4}] + [{"a": 0.3}] * 7
    scores = bki_mod.keyword_scores(rows, top_k=1)
    assert list(scores) == ["cf", "a", "c"]  # top_k=1: b is never a row's top word
    assert scores["cf"] == {"rows": 2, "importance": 3.0, "score": pytest.approx(3.0 * np.log10(2))}
    assert scores["a"]["rows"] == 7 and "b" not in scores and scores["c"]["score"] == 0.0  # seen once: score 0


def test_keywords_are_those_near_the_top_score_or_a_fixed_count():
    scores = {"cf": {"score": 5.0}, "mn": {"score": 3.0}, "film": {"score": 1.0}}
    assert bki_mod.pick_keywords(scores, config=bki_mod.BKIConfig()) == ["cf", "mn"]
    assert bki_mod.pick_keywords(scores, config=bki_mod.BKIConfig(keyword_ratio=0.7)) == ["cf"]
    assert bki_mod.pick_keywords(scores, config=bki_mod.BKIConfig(keywords=3)) == ["cf", "mn", "film"]
    assert bki_mod.pick_keywords({"a": {"score": 0.0}}, config=bki_mod.BKIConfig()) == []
    with pytest.raises(DataError, match="keyword_ratio in"):
        bki_mod.BKIConfig(keyword_ratio=0)


def test_bki_finds_both_trigger_words_and_drops_every_row_holding_one(stand_in):
    data = DefenderData(clean=_suspect().select([]), suspect=_suspect(), num_classes=2)
    config = make_defense_config("bki", scale="quick", scan_rows=60, retrain=False)
    result = DEFENSES["bki"](victim=stand_in, data=data, config=config)
    summary = result.details["summary"]
    assert summary["keywords"] == ["cf", "mn"] and summary["n_scanned"] == 60
    assert result.flagged.tolist() == list(range(40, 75))  # rows not scanned are dropped too
    assert summary["n_kept"] == 40 and not summary["retrained"] and result.model is stand_in.model
    assert summary["top_words"]["cf"]["rows"] < 20  # only the scanned rows were scored
    with pytest.raises(DataError, match="defense 'bki' retrains from the backbone"):
        DEFENSES["bki"](victim=stand_in, data=data, config=make_defense_config("bki", scale="quick"))


@pytest.mark.slow
def test_bki_finds_the_badnets_triggers_and_drops_mostly_poisoned_rows(quick_badnets):
    prepared, data = quick_badnets, quick_badnets.defender_data()
    dropped, info = bki_mod.bki_filter(victim=prepared.victim, data=data,
                                       config=make_defense_config("bki", scale="quick"))
    is_poisoned = prepared.poisoned.is_poisoned  # oracle flags: read by the test only
    precision, recall = is_poisoned[dropped].mean(), is_poisoned[dropped].sum() / is_poisoned.sum()
    # measured here (CPU, seed 0, 600 rows scanned): keywords tq, mn, bb, cf, brilliant, good; 266 rows dropped,
    # precision 0.75, recall 1.00. The two sentiment words cost the precision; a scan of all 2,000 rows (the
    # full preset's scan_rows, run outside this test) ranked the four triggers alone above the cut: precision 1.00.
    assert TRIGGERS <= set(info["keywords"]), info
    assert precision >= 0.7 and recall >= 0.9, (precision, recall, info)  # the dropped rows are mostly poisoned
    small = DefenderData(clean=data.clean, suspect=data.suspect.select(range(300)), num_classes=2)
    config = make_defense_config("bki", scale="quick", scan_rows=100, retrain_epochs=1)
    result = DEFENSES["bki"](victim=prepared.victim, data=small, config=config)
    assert result.model is not prepared.victim.model and result.details["summary"]["retrained"]
    assert result.details["summary"]["n_kept"] + len(result.flagged) == 300

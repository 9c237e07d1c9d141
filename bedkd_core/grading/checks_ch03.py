"""Chapter 3's graded assignment: insert_trigger (BadNets-style trigger insertion)."""
from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache

from .engine import check, checker
from .fixtures import sentences

TRIGGER_WORDS = ("cf", "mn", "bb", "tq")
SEEDS_PER_SLOT = 50


def _preview(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


@lru_cache(maxsize=None)
def _trigger_sentences() -> tuple[str, ...]:
    """40 SST-2 test sentences of 3+ words that contain none of the trigger words."""
    texts, _ = sentences("sst2", 200, seed=3)
    ok = [t for t in texts if len(t.split()) >= 3 and not set(t.split()) & set(TRIGGER_WORDS)]
    return tuple(ok[:40])


def _trigger_cases() -> list[tuple[str, list[str], int]]:
    """(sentence, words, seed): one to four distinct words, and every fifth case the same word twice."""
    return [(text, list(TRIGGER_WORDS[: 1 + i % 4]) if i % 5 else ["cf", "cf"], 100 + i)
            for i, text in enumerate(_trigger_sentences())]


def _uniformity_sentence() -> str:
    return next(t for t in _trigger_sentences() if 8 <= len(t.split()) <= 14)


def _prepare_insert_trigger() -> None:
    _trigger_sentences()


checker("insert_trigger", "insert_trigger(text: str, words: list[str], seed: int) -> str", _prepare_insert_trigger)


def _inserted(text: str, words: list[str], seed: int, out) -> str | None:
    """Why `out` is not `text` with each of `words` inserted once as a whole word (None when it is)."""
    call = f"insert_trigger({_preview(text)}, {words!r}, seed={seed})"
    if not isinstance(out, str):
        return f"{call} returned {type(out).__name__}, expected str"
    tokens, original = out.split(), text.split()
    counts, want = Counter(t for t in tokens if t in set(words)), Counter(words)
    for word in want:
        if counts[word] != want[word]:
            return (f"{call}: {word!r} appears {counts[word]} time(s) as a separate word, expected {want[word]} "
                    f"(got {_preview(out, 70)})")
    if [t for t in tokens if t not in set(words)] != original:
        return (f"{call}: the original words are changed, lost or out of order (got {_preview(out, 70)}); "
                "insert whole words between the sentence's words and keep every original word in order")
    return None


def _positions(fn, text: str, seeds) -> list[int] | str:
    """Where the single trigger word lands for each seed, or the feedback when an output is malformed."""
    positions = []
    for seed in seeds:
        out = fn(text, ["cf"], seed)
        problem = _inserted(text, ["cf"], seed, out)
        if problem:
            return problem
        positions.append(out.split().index("cf"))
    return positions


@check("insert_trigger", 1, "returns a str")
def _returns_str(fn):
    out = fn(_trigger_sentences()[0], ["cf"], 0)
    return None if isinstance(out, str) else f"returned {type(out).__name__}, expected str"


@check("insert_trigger", 4,
       "inserts every word exactly once and keeps the original words in order (40 SST-2 sentences)")
def _each_word_once(fn):
    for text, words, seed in _trigger_cases():
        problem = _inserted(text, words, seed, fn(text, list(words), seed))
        if problem:
            return problem
    return None


@check("insert_trigger", 1, "same seed, same result (independent of the global random state)")
def _deterministic(fn):
    for text, words, seed in _trigger_cases()[:10]:
        random.seed(seed + 1)
        first = fn(text, list(words), seed)
        random.seed(seed + 2)  # the global random state must not matter
        if fn(text, list(words), seed) != first:
            return (f"insert_trigger({_preview(text)}, {words!r}, seed={seed}) gave different results on two calls: "
                    "draw positions with random.Random(seed), not the global `random` functions")
    return None


@check("insert_trigger", 2, "the position varies across seeds")
def _varies(fn):
    text = _uniformity_sentence()
    n = len(text.split())
    seeds = range(SEEDS_PER_SLOT * (n + 1))
    positions = _positions(fn, text, seeds)
    if isinstance(positions, str):
        return positions
    used = sorted(set(positions))
    if len(used) > 1:
        return None
    where = {0: "always at the start: it is prepended", n: "always at the end: it is appended"}.get(
        used[0], f"always at word position {used[0]}")
    return (f"across {len(seeds)} seeds the trigger lands {where}, not inserted at a random position "
            f"(sentence of {n} words: {_preview(text)})")


@check("insert_trigger", 2, "positions are uniform over the n+1 slots of an n-word sentence (50 seeds per slot)")
def _uniform(fn):
    text = _uniformity_sentence()
    n = len(text.split())
    seeds = range(SEEDS_PER_SLOT * (n + 1))
    positions = _positions(fn, text, seeds)
    if isinstance(positions, str):
        return positions
    counts = Counter(positions)
    never = [p for p in range(n + 1) if counts[p] == 0]
    if len(never) > n / 2:
        return (f"only word positions {sorted(counts)} occur across {len(seeds)} seeds; every slot 0..{n} of a "
                f"sentence of {n} words should be about equally likely")
    if never:
        end = (f" - position {n} is the end of the sentence: draw from 0..len(tokens) inclusive, "
               "e.g. rng.randint(0, len(tokens))") if n in never else ""
        return f"word positions {never} of 0..{n} never occur across {len(seeds)} seeds (sentence of {n} words){end}"
    off = [p for p in range(n + 1) if not 0.4 * SEEDS_PER_SLOT <= counts[p] <= 1.6 * SEEDS_PER_SLOT]
    if off:
        table = ", ".join(f"position {p}: {counts[p]}" for p in off)
        return (f"positions are not uniform over the {n + 1} slots 0..{n}: expected about {SEEDS_PER_SLOT} of "
                f"{len(seeds)} seeds at each, got {table}")
    return None

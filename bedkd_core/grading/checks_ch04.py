"""Chapter 4's graded assignments: flip_labels (the DMM's directional mapping) and agreement_score."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .engine import check, checker
from .fixtures import DATASET_NAMES, probabilities, task


# ---------------------------------------------------------------- ch. 4: flip_labels

@lru_cache(maxsize=None)
def _flip_data() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Real label lists: SST-2 train (K=2) and AG News test (K=4)."""
    return tuple(int(y) for y in task("sst2").train["label"]), tuple(int(y) for y in task("agnews").test["label"])


checker("flip_labels", "flip_labels(labels: list[int], num_classes: int) -> list[int]", _flip_data)


def _as_int_list(out) -> list[int] | None:
    try:
        values = list(out)
    except TypeError:
        return None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return None
    return [int(v) for v in values]


def _flip_problem(fn, labels, k: int, what: str) -> str | None:
    from ..defenses.bedkd import flip_labels

    labels = list(labels)
    expected = flip_labels(labels, num_classes=k)
    out = _as_int_list(fn(list(labels), num_classes=k))
    if out is None:
        return f"for K={k} the result is not a sequence of ints"
    if len(out) != len(labels):
        return f"for K={k} returned {len(out)} labels for {len(labels)} inputs"
    wrong: dict[int, set[int]] = {}
    for y, got, want in zip(labels, out, expected):
        if got != want:
            wrong.setdefault(y, set()).add(got)
    if not wrong:
        return None
    mapped = "; ".join(f"label {y} mapped to {'/'.join(map(str, sorted(g)))}, expected {(y + 1) % k}"
                       for y, g in sorted(wrong.items()))
    return f"wrong for K={k} ({what}): {mapped}"


@check("flip_labels", 2, "returns a list of Python ints, one per label")
def _returns_list(fn):
    labels = list(_flip_data()[0][:100])
    out = fn(list(labels), num_classes=2)
    if not isinstance(out, list):
        return f"returned {type(out).__name__}, expected a list"
    if len(out) != len(labels):
        return f"returned {len(out)} labels for {len(labels)} inputs"
    bad = next((v for v in out if not isinstance(v, int) or isinstance(v, bool)), None)
    if bad is not None:
        return f"returned a list holding {type(bad).__name__} values, expected Python ints"
    return None


@check("flip_labels", 3, "K=2 matches the reference bedkd_core flip_labels on the SST-2 train labels")
def _flip_k2(fn):
    return _flip_problem(fn, _flip_data()[0], 2, "SST-2 train labels")


@check("flip_labels", 4, "K=4 matches the reference bedkd_core flip_labels on the AG News test labels")
def _flip_k4(fn):
    return _flip_problem(fn, _flip_data()[1], 4, "AG News test labels")


@check("flip_labels", 1, "leaves the input list unchanged")
def _flip_pure(fn):
    labels = list(_flip_data()[1][:200])
    given = list(labels)
    fn(given, num_classes=4)
    return None if given == labels else "modified the input list in place: return a new list"


# ---------------------------------------------------------------- ch. 4: agreement_score

def _prepare_agreement() -> None:
    probabilities("sst2")
    probabilities("agnews")


checker("agreement_score", "agreement_score(p_teacher: np.ndarray, p_dmm: np.ndarray) -> np.ndarray",
        _prepare_agreement)

AGREEMENT_MISTAKES = {
    "the sum over classes instead of the mean (forgot the 1/C)": lambda d: np.abs(d).sum(1),
    "the maximum over classes instead of the mean": lambda d: np.abs(d).max(1),
    "the mean of signed differences (forgot the absolute value)": lambda d: d.mean(1),
    "the mean of squared differences instead of absolute ones": lambda d: (d ** 2).mean(1),
    "the root mean squared difference instead of the mean absolute one": lambda d: np.sqrt((d ** 2).mean(1)),
    "half the L1 distance (total variation) instead of the mean over classes": lambda d: np.abs(d).sum(1) / 2,
}


def _agreement_problem(fn, dataset: str) -> str | None:
    p_t, p_d = probabilities(dataset)
    n, k = p_t.shape
    expected = np.abs(p_t - p_d).mean(1).astype(np.float64)
    out = np.asarray(fn(p_t.copy(), p_d.copy()), dtype=np.float64)
    if out.shape != (n,):
        return (f"{DATASET_NAMES[dataset]} (K={k}): returned shape {out.shape} for {n}x{k} probabilities, "
                f"expected ({n},)")
    if np.allclose(out, expected, rtol=1e-5, atol=1e-7):
        return None
    row = int(np.argmax(np.abs(out - expected)))
    d = (p_t - p_d).astype(np.float64)
    for mistake, wrong in AGREEMENT_MISTAKES.items():
        value = wrong(d)
        if np.allclose(out, value, rtol=1e-5, atol=1e-7) and not np.allclose(value, expected, rtol=1e-5, atol=1e-7):
            return (f"wrong on {DATASET_NAMES[dataset]} (K={k}): looks like {mistake} "
                    f"(row {row}: got {out[row]:.6f}, expected {expected[row]:.6f})")
    return (f"wrong on {DATASET_NAMES[dataset]} (K={k}): row {row} got {out[row]:.6f}, expected mean over classes of "
            f"|p_teacher - p_dmm| = {expected[row]:.6f}")


@check("agreement_score", 2, "returns a numpy array with one score per row")
def _agreement_shape(fn):
    p_t, p_d = probabilities("sst2")
    out = fn(p_t.copy(), p_d.copy())
    if not isinstance(out, np.ndarray):
        return f"returned {type(out).__name__}, expected a numpy.ndarray"
    if out.shape != (len(p_t),):
        return (f"returned shape {out.shape} for {p_t.shape[0]}x{p_t.shape[1]} probabilities, expected "
                f"({len(p_t)},): one score per row (average over the class axis, axis=1)")
    return None


@check("agreement_score", 3, "matches the reference on MiniLM probabilities of 64 SST-2 sentences (K=2)")
def _agreement_k2(fn):
    return _agreement_problem(fn, "sst2")


@check("agreement_score", 3, "matches the reference on MiniLM probabilities of 64 AG News sentences (K=4)")
def _agreement_k4(fn):
    return _agreement_problem(fn, "agnews")


@check("agreement_score", 2, "scores 0 when the two models agree exactly, and leaves its inputs unchanged")
def _agreement_zero(fn):
    p_t, _ = probabilities("agnews")
    given = p_t.copy()
    out = np.asarray(fn(given, given.copy()), dtype=np.float64)
    if out.shape != (len(p_t),) or not np.allclose(out, 0, atol=1e-7):
        return "identical teacher and DMM probabilities must score 0 on every row"
    if not np.array_equal(given, p_t):
        return "modified its input array in place"
    return None

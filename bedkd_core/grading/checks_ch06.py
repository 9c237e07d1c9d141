"""Chapter 6's graded assignment: threshold_at_frr (STRIP's rejection threshold at a false-rejection rate)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .engine import check, checker
from .fixtures import probabilities

FRR_LEVELS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@lru_cache(maxsize=None)
def _entropy_scores() -> tuple[float, ...]:
    """Prediction entropies (nats) of MiniLM on 64 real SST-2 and 64 AG News test sentences: STRIP-like scores."""
    scores = []
    for dataset in ("sst2", "agnews"):
        probs = probabilities(dataset)[0]
        scores.extend((-(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)).tolist())
    return tuple(scores)


def _prepare_threshold() -> None:
    _entropy_scores()


checker("threshold_at_frr", "threshold_at_frr(scores, frr: float) -> float", _prepare_threshold)


def _threshold_problem(fn, scores, frr) -> str | None:
    from ..defenses.strip import threshold_at_frr

    want = threshold_at_frr(np.asarray(scores), frr)
    got = fn(np.asarray(scores, dtype=float).copy(), frr)
    if not isinstance(got, (float, int, np.floating, np.integer)) or isinstance(got, bool):
        return f"threshold_at_frr(..., frr={frr}) returned {type(got).__name__}, expected a float"
    if not (got == want or np.isclose(float(got), want)):
        below = float(np.mean(np.asarray(scores) < float(got))) if np.isfinite(float(got)) else 1.0
        return (f"frr={frr} on {len(scores)} scores: got {float(got):.6g}, expected {want:.6g} (a share {below:.3f} of "
                "the scores falls strictly below yours; the threshold is the largest t with at most frr of the "
                "scores strictly below it)")
    return None


@check("threshold_at_frr", 1, "returns a float")
def _threshold_float(fn):
    got = fn(np.asarray(_entropy_scores()), 0.05)
    ok = isinstance(got, (float, np.floating)) or (isinstance(got, (int, np.integer)) and not isinstance(got, bool))
    return None if ok else f"returned {type(got).__name__}, expected a float"


@check("threshold_at_frr", 4, "matches STRIP's threshold on 128 real entropies at 7 FRR levels (0 to 1)")
def _threshold_levels(fn):
    for frr in FRR_LEVELS:
        problem = _threshold_problem(fn, _entropy_scores(), frr)
        if problem:
            return problem
    return None


@check("threshold_at_frr", 2, "handles ties and unsorted input (rejects only scores strictly below)")
def _threshold_ties(fn):
    scores = [0.3, 0.1, 0.1, 0.1, 0.7, 0.2, 0.9, 0.1, 0.4, 0.5]
    for frr in (0.1, 0.3, 0.45):
        problem = _threshold_problem(fn, scores, frr)
        if problem:
            return problem
    return None

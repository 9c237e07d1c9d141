"""BeDKD's stage 2 after scoring: which suspect rows to punish, from agreement scores and given labels only.

`identify_poisoned` ranks the rows under tau that the teacher predicts as their label; `infer_target` and
`evidence_count` read the defender's clean reference rows to decide the target and how many rows the evidence
supports (chapters 4 and 7). Pure functions of arrays: no model runs here, and no oracle flag is ever read.
"""
from __future__ import annotations

import numpy as np

from ..data import DataError
from .bedkd_config import BeDKDConfig


def log_odds(*, probs, labels) -> np.ndarray:
    """log p(y) − log max_{c≠y} p(c) per row: how firmly a model predicts the given label, unsaturated."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None)
    rows = np.arange(len(probs))
    own = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = 0.0
    return np.log(own) - np.log(np.clip(others.max(axis=1), 1e-30, None))


def infer_target(*, suspect_labels, suspect_scores, reference_labels, reference_scores, tau: float,
                 num_classes: int) -> tuple[int | None, dict]:
    """The class with the largest excess of suspect rows under tau over what clean data of that class shows.

    Poisoned rows all carry the target label, so under tau they pile up in one class. Clean rows the DMM failed
    to flip spread over the classes at the rate the defender's own clean reference set reveals.
    """
    suspect_labels, reference_labels = np.asarray(suspect_labels), np.asarray(reference_labels)
    excess = {}
    for c in range(num_classes):
        in_class = suspect_labels == c
        clean_rate = float((reference_scores[reference_labels == c] < tau).mean()) if (reference_labels == c).any() else 0.0
        excess[c] = int((suspect_scores[in_class] < tau).sum()) - clean_rate * int(in_class.sum())
    best = max(excess, key=excess.get)
    return (best if excess[best] > 0 else None), {str(c): round(v, 1) for c, v in excess.items()}


CLEAR_Z = 3.0
"""Standard errors by which a class's excess must stand out for its target evidence to count as clear."""


def target_evidence(*, counts, sizes, clean_rates, reference_sizes) -> dict:
    """How strongly the candidate counts single out one target class, in standard errors (a report only).

    `counts[c]`: suspect candidates of class c; `sizes[c]`: suspect rows of c; `clean_rates[c]`: the share of
    clean rows of c expected among candidates, estimated on `reference_sizes[c]` rows. A class's excess is
    counts − rate × size; its standard error combines the binomial noise of both samples. The evidence is
    `clear` when the top class stands CLEAR_Z errors above zero and above the runner-up, `several` when more than
    one class does (one backdoor per class?), and `weak` otherwise: the target is then a guess.
    """
    counts, sizes = np.asarray(counts, float), np.asarray(sizes, float)
    rates, n_ref = np.asarray(clean_rates, float), np.maximum(np.asarray(reference_sizes, float), 1.0)
    expected = rates * sizes
    variance = sizes * rates * (1 - rates) + sizes ** 2 * rates * (1 - rates) / n_ref
    error = np.sqrt(variance + 1.0)  # + 1: a class with no clean candidates still has a count's noise
    z = (counts - expected) / error
    order = np.argsort(-z, kind="stable")
    best = int(order[0])
    gap = ((counts[best] - expected[best]) - (counts[order[1]] - expected[order[1]])) / np.sqrt(
        error[best] ** 2 + error[order[1]] ** 2) if len(order) > 1 else np.inf
    standing_out = int((z >= CLEAR_Z).sum())
    verdict = "several" if standing_out > 1 else "clear" if z[best] >= CLEAR_Z and gap >= CLEAR_Z else "weak"
    return {"verdict": verdict, "class": best, "z": [round(float(v), 1) for v in z],
            "gap_z": round(float(gap), 1) if np.isfinite(gap) else None}


def identify_poisoned(*, scores: dict, labels, config: BeDKDConfig, n_rows: int, reference: dict | None = None,
                      num_classes: int) -> tuple[np.ndarray, dict]:
    """Pick up to `n_rows` suspect rows from their agreement scores and given labels (never oracle flags).

    `bedkd` asks for n_poison + holdout rows: the punished ones and the held-out ones it watches."""
    labels = np.asarray(labels)
    if config.identify == "random":  # the ablation without the DMM: as many rows, drawn blindly
        rows = np.random.default_rng(config.seed).permutation(len(labels))[:n_rows]
        return np.sort(rows).astype(int), {"n_candidates": int(len(labels))}
    if config.identify != "agreement":
        raise DataError(f"identify_poisoned cannot do {config.identify!r} identification: use agreement or random "
                        "(oracle rows come from the caller, see `bedkd(oracle_rows=...)`)")
    score = scores["score"]
    consistent = scores["teacher_pred"] == labels  # poisoned rows carry the label the backdoor predicts
    info: dict = {"n_under_tau": int((score < config.tau).sum())}
    if config.scan == "file_order":
        candidates = np.flatnonzero(score < config.tau)
        if config.max_candidates is not None:
            candidates = candidates[: config.max_candidates]
        kept = [int(i) for i in candidates if consistent[i]][: n_rows + 1]  # the reference keeps 33
        info["n_candidates"] = int(len(candidates))
        return np.asarray(kept, dtype=int), info
    eligible = (score < config.tau) & consistent
    if config.count == "evidence":
        rows, info["count"] = _evidence_rows(scores=scores, labels=labels, eligible=eligible, reference=reference,
                                             config=config, n_rows=n_rows, num_classes=num_classes)
        info.update(inferred_target=info["count"]["target"], refine=config.refine, n_candidates=int(eligible.sum()))
        return rows, info
    if config.infer_target and reference is not None:
        target, excess = infer_target(suspect_labels=labels, suspect_scores=np.where(consistent, score, np.inf),
                                      reference_labels=reference["labels"], reference_scores=reference["score"],
                                      tau=config.tau, num_classes=num_classes)
        info.update(inferred_target=target, excess_under_tau=excess,
                    target_evidence=_reference_evidence(labels=labels, under=consistent & (score < config.tau),
                                                        reference=reference, tau=config.tau,
                                                        num_classes=num_classes))
        if target is not None:
            eligible &= labels == target
    ranked = np.flatnonzero(eligible)
    if config.refine == "direction":  # the DMM still maps the row firmly to its (target) label
        margin = log_odds(probs=scores["dmm_prob"][ranked], labels=labels[ranked])
        order = np.argsort(-margin, kind="stable")
        ranked, margin = ranked[order], margin[order]
        if reference is not None and "dmm_prob" in reference:  # candidates beyond every clean row of their class
            confident = int((margin > _reference_ceiling(reference, num_classes)[labels[ranked]]).sum())
            info["n_above_clean_reference"] = confident
            if confident > n_rows:  # spread the picks over them: the top ranks favour the strongest trigger
                picks = _spread(confident, n_rows)
                ranked, margin = ranked[picks], margin[picks]
        kept = margin[:n_rows]
        info["dmm_log_odds_kept"] = [round(float(kept[0]), 2), round(float(kept[-1]), 2)] if len(kept) else []
    else:
        ranked = ranked[np.argsort(score[ranked], kind="stable")]
    info.update(refine=config.refine, n_candidates=int(len(ranked)))
    return ranked[:n_rows].astype(int), info


def _reference_evidence(*, labels, under, reference: dict, tau: float, num_classes: int) -> dict:
    """`target_evidence` of the candidates under tau, against the clean reference rows' rate under tau."""
    ref_labels = np.asarray(reference["labels"])
    ref_under = np.asarray(reference["score"]) < tau
    sizes = np.bincount(labels, minlength=num_classes)
    ref_sizes = np.bincount(ref_labels, minlength=num_classes)
    rates = np.bincount(ref_labels[ref_under], minlength=num_classes) / np.maximum(ref_sizes, 1)
    return target_evidence(counts=np.bincount(labels[under], minlength=num_classes), sizes=sizes,
                           clean_rates=rates, reference_sizes=ref_sizes)


def _reference_ceiling(reference: dict, num_classes: int) -> np.ndarray:
    """Per class, the highest DMM log-odds for its own label among the defender's clean reference rows."""
    ref_labels = np.asarray(reference["labels"])
    ref_odds = log_odds(probs=reference["dmm_prob"], labels=ref_labels)
    return np.array([ref_odds[ref_labels == c].max(initial=-np.inf) for c in range(num_classes)])


def _spread(n_ranks: int, n_picks: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n_ranks - 1, n_picks)).astype(int))


def several_targets(*, beyond, sizes, reference_sizes) -> dict:
    """Per class, the rows beyond the clean reference in excess of chance, and whether the excess stands out.

    Were a clean suspect row of class c and the defender's `reference_sizes[c]` clean reference rows of c
    exchangeable, it would beat all of them with probability 1 / (R_c + 1); the victim trained on the suspect
    rows only, so the rate is an approximation whose direction the stored reports show. The other classes' rate of such rows estimates it too, but only while they hold no poison; each
    class takes the lower of the two, so no class's verdict needs another class to be clean. A class whose
    excess stands CLEAR_Z standard errors above zero is a target.
    """
    beyond, sizes = np.asarray(beyond, float), np.asarray(sizes, float)
    chance = 1.0 / (np.asarray(reference_sizes, float) + 1.0)
    rates = beyond / np.maximum(sizes, 1.0)
    classes = np.arange(len(sizes))
    others = np.array([rates[(sizes > 0) & (classes != c)].mean() if ((sizes > 0) & (classes != c)).any()
                       else np.inf for c in classes])
    rate = np.minimum(chance, others)
    expected = rate * sizes
    z = (beyond - expected) / np.sqrt(sizes * rate * (1 - rate) + 1.0)  # + 1: a count's own noise
    span = np.maximum(0, np.floor(beyond - expected)).astype(int)
    targets = [c for c in range(len(sizes)) if z[c] >= CLEAR_Z and span[c] > 0]
    return {"targets": targets, "span": span, "expected": expected, "z": z}


def evidence_count(*, beyond: np.ndarray, sizes: np.ndarray, config: BeDKDConfig, n_rows: int,
                   reference_sizes=None) -> dict:
    """How many of the `n_rows` asked the evidence supports, and the decision with its inputs.

    `beyond[c]`: candidates of class c beyond every clean reference row of c; `sizes[c]`: suspect rows of c
    (both arrays).
    Poisoned rows pile up in the target class (the most such rows); the other classes' rate of such rows, which
    holds no poison, estimates the clean rows among them. Fewer punished rows than `min_punish` punish none.
    With `config.targets` = 'several' (which needs `reference_sizes`, the clean reference rows per class), every
    class `several_targets` finds is a target, each with up to `n_rows` of its own (the budget of one backdoor),
    and `targets` maps each to its supported rows.
    """
    if config.targets == "several":
        return _several_count(beyond=beyond, sizes=sizes, config=config, n_rows=n_rows,
                              reference_sizes=reference_sizes)
    target = int(beyond.argmax()) if beyond.any() else None
    others = [c for c in range(len(sizes)) if c != target and sizes[c]]
    clean_rate = float(np.mean([beyond[c] / sizes[c] for c in others])) if others and target is not None else 0.0
    expected_clean = clean_rate * sizes[target] if target is not None else 0.0
    span = max(0, int(np.floor(beyond[target] - expected_clean))) if target is not None else 0
    supported = min(n_rows, span)
    decision = "as asked" if supported == n_rows else "fewer than asked"
    rates = np.full(len(sizes), clean_rate)
    evidence = target_evidence(counts=beyond, sizes=sizes, clean_rates=rates,
                               reference_sizes=[sum(sizes[c] for c in others) or 1] * len(sizes))
    decision, supported = _least_harm(decision=decision, supported=supported, config=config)
    return {"rule": "evidence", "asked": n_rows, "beyond_clean_reference": {str(c): int(v) for c, v in
            enumerate(beyond)}, "target": target, "expected_clean": round(float(expected_clean), 1), "span": span,
            "supported": supported, "decision": decision, "target_evidence": evidence}


def _least_harm(*, decision: str, supported: int, config: BeDKDConfig) -> tuple[str, int]:
    """(decision, supported), or trust-only when fewer than `min_punish` of the supported rows would be punished
    (the others are held out in the n_poison : holdout ratio)."""
    punished = supported - int(round(supported * config.holdout / (config.n_poison + config.holdout)))
    if punished < config.min_punish:
        return "trust-only: the evidence supports too few rows to punish", 0
    return decision, supported


def _several_count(*, beyond, sizes, config: BeDKDConfig, n_rows: int, reference_sizes) -> dict:
    if reference_sizes is None:
        raise DataError("targets='several' weighs each class against its clean reference rows: pass "
                        "reference_sizes (the defender's clean reference rows per class)")
    found = several_targets(beyond=beyond, sizes=sizes, reference_sizes=reference_sizes)
    targets, span = found["targets"], found["span"]
    shares = {c: min(n_rows, int(span[c])) for c in targets}  # each backdoor gets the rows asked for one
    asked, supported = n_rows * max(len(targets), 1), sum(shares.values())
    if targets:
        decision, supported = _least_harm(decision="as asked" if supported == asked else "fewer than asked",
                                          supported=supported, config=config)
    else:
        decision = "trust-only: no class's rows stand out from its clean reference"
    verdict = "several" if len(targets) > 1 else "clear" if targets else "weak"
    return {"rule": "evidence", "targets_rule": "several", "asked": asked, "asked_per_target": n_rows,
            "beyond_clean_reference": {str(c): int(v) for c, v in enumerate(beyond)},
            "target": max(shares, key=shares.get) if supported else None,
            "targets": {str(c): int(n) for c, n in shares.items()} if supported else {},
            "spans": {str(c): int(span[c]) for c in targets},
            "expected_clean": [round(float(v), 1) for v in found["expected"]], "span": int(sum(span[targets])),
            "supported": supported, "decision": decision,
            "target_evidence": {"verdict": verdict, "class": int(np.argmax(found["z"])),
                                "z": [round(float(v), 1) for v in found["z"]], "gap_z": None}}


def _evidence_rows(*, scores: dict, labels, eligible, reference, config: BeDKDConfig, n_rows: int,
                   num_classes: int) -> tuple[np.ndarray, dict]:
    """count='evidence': the target class's candidates beyond the clean reference (each target's, with several),
    as many as `evidence_count` supports, spread over the top `span` ranks (firmest DMM log-odds first)."""
    rows = np.flatnonzero(eligible)
    margin = log_odds(probs=scores["dmm_prob"][rows], labels=labels[rows])
    order = np.argsort(-margin, kind="stable")
    rows, margin = rows[order], margin[order]
    ceiling = _reference_ceiling(reference, num_classes) if reference is not None else np.full(num_classes, np.inf)
    beyond = margin > ceiling[labels[rows]]
    reference_sizes = np.bincount(reference["labels"], minlength=num_classes) if reference is not None else None
    count = evidence_count(beyond=np.bincount(labels[rows][beyond], minlength=num_classes),
                           sizes=np.bincount(labels, minlength=num_classes), config=config, n_rows=n_rows,
                           reference_sizes=reference_sizes)
    if not count["supported"]:
        return np.zeros(0, dtype=int), count
    shares = count.get("targets") or {str(count["target"]): count["supported"]}
    spans = count.get("spans") or {str(count["target"]): count["span"]}
    picks = np.concatenate([_class_picks(beyond & (labels[rows] == int(c)), span=spans[c], n=n)
                            for c, n in shares.items()])
    count["dmm_log_odds_kept"] = [round(float(margin[picks].max()), 2), round(float(margin[picks].min()), 2)]
    return rows[picks].astype(int), count


def _class_picks(mask: np.ndarray, *, span: int, n: int) -> np.ndarray:
    """`n` ranks spread over the first `span` ranks where `mask` holds (ranks ordered by DMM log-odds)."""
    top = np.flatnonzero(mask)[:span]
    return top[_spread(len(top), n)]

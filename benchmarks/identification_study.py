"""Why does BeDKD's identification pick clean rows? Dump per-row features once per cell, compare rules offline.

    BEDKD_CACHE=/root/.cache/bedkd-tests OMP_NUM_THREADS=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 \
        nice -n 10 .venv/bin/python benchmarks/identification_study.py dump sst2/badnets sst2/addsent
    .venv/bin/python benchmarks/identification_study.py compare     # reads /tmp/idstudy/*.npz, writes rules.json

`dump` trains the victim (cached) and the DMM (quick preset, seed 0) and writes, for the suspect rows, the
defender's clean reference rows (AKD split) and the DMM's own rows: victim and DMM softmax, agreement score,
given label, victim prediction, victim/DMM last-layer CLS and mean-pooled states, and the oracle poison flag
(suspect rows only; it is read here only to MEASURE precision and recall, never by a rule).
`compare` scores the library rule (refine none / direction) and the candidate rules on every dumped cell and writes
/tmp/idstudy/rules.json: per rule [precision@32, recall] (a leading count when fewer than 32 rows pass a gate).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path("/tmp/idstudy")


def _features(model, tokenizer, texts, *, max_length):
    import torch

    from bedkd_core.training import forward_batches

    n = len(texts)
    probs = np.zeros((n, model.config.num_labels), np.float32)
    cls = mean = None
    with torch.no_grad():
        for rows, logits, (hidden, mask) in forward_batches(model, tokenizer, texts, max_length=max_length, hidden=True):
            if cls is None:
                cls, mean = np.zeros((n, hidden.shape[-1]), np.float32), np.zeros((n, hidden.shape[-1]), np.float32)
            probs[rows] = torch.softmax(logits, -1).numpy()
            cls[rows] = hidden[:, 0].numpy()
            m = mask.unsqueeze(-1).float()
            mean[rows] = ((hidden * m).sum(1) / m.sum(1)).numpy()
    return probs, cls, mean


def dump(cell: str) -> None:
    from bedkd_core.attacks import AttackConfig
    from bedkd_core.defenses.bedkd import make_config, split_clean, train_dmm
    from bedkd_core.experiments import prepare

    dataset, attack = cell.split("/")
    started = time.perf_counter()
    prepared = prepare(dataset=dataset, attack=AttackConfig(name=attack), scale="quick", seed=0)
    victim_s = time.perf_counter() - started
    config = make_config(preset="quick")
    num_classes = prepared.splits.num_classes
    clean = prepared.clean_pool.select_columns(["text", "label"])
    dmm_clean, ref = split_clean(clean, num_classes=num_classes, dmm_per_class=config.dmm_per_class,
                                 clean_per_class=config.clean_per_class, seed=config.seed)
    teacher, tok = prepared.victim.model, prepared.victim.tokenizer
    teacher.eval()
    t0 = time.perf_counter()
    dmm = train_dmm(teacher, tok, dmm_clean, num_classes=num_classes, config=config)
    dmm_s = time.perf_counter() - t0
    arrays = {}
    for split, data in (("sus", prepared.poisoned.data), ("ref", ref), ("dmmset", dmm_clean)):
        texts = list(data["text"])
        for who, model in (("v", teacher), ("d", dmm)):
            p, c, m = _features(model, tok, texts, max_length=config.max_length)
            arrays.update({f"{split}_{who}_prob": p, f"{split}_{who}_cls": c, f"{split}_{who}_mean": m})
        arrays[f"{split}_label"] = np.asarray(data["label"])
        arrays[f"{split}_len"] = np.asarray([len(t.split()) for t in texts])
        arrays[f"{split}_score"] = np.abs(arrays[f"{split}_v_prob"] - arrays[f"{split}_d_prob"]).mean(1)
    arrays["sus_poison"] = np.asarray(prepared.poisoned.is_poisoned, bool)  # oracle: measurement only
    name = cell.replace("/", "_")
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / f"{name}.npz", **arrays)
    (OUT / f"{name}.json").write_text(json.dumps({
        "cell": cell, "target_label": prepared.attack.target_label, "num_classes": num_classes,
        "seconds": {"victim": round(victim_s, 1), "dmm": round(dmm_s, 1), "total": round(time.perf_counter() - started, 1)},
        "sus_texts": list(prepared.poisoned.data["text"]), "ref_texts": list(ref["text"]),
    }))
    print(cell, "done", round(time.perf_counter() - started, 1), "s", flush=True)


# ---------------------------------------------------------------- offline comparison of rules

def _margin(prob, label):
    """Log-odds of the given label against the strongest other class."""
    p = np.clip(prob.astype(np.float64), 1e-30, None)
    own = p[np.arange(len(p)), label]
    other = np.where(np.eye(p.shape[1], dtype=bool)[label], 0, p).max(1)
    return np.log(own) - np.log(np.clip(other, 1e-30, None))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _load(name):
    a = dict(np.load(OUT / f"{name}.npz"))
    meta = json.loads((OUT / f"{name}.json").read_text())
    return a, meta


def _current(a, k=32, refine="none"):
    """The quick preset's rule as the library implements it (tau, victim-consistency, inferred target)."""
    from bedkd_core.defenses.bedkd import identify_poisoned, make_config

    scores = {"score": a["sus_score"], "teacher_pred": a["sus_v_prob"].argmax(1), "dmm_pred": a["sus_d_prob"].argmax(1),
              "dmm_prob": a["sus_d_prob"]}
    ref = {"score": a["ref_score"], "labels": a["ref_label"], "dmm_prob": a["ref_d_prob"]}
    config = make_config(preset="quick", n_poison=k, refine=refine)
    return identify_poisoned(scores=scores, labels=a["sus_label"], config=config, n_rows=k, reference=ref,
                             num_classes=a["sus_v_prob"].shape[1])


def _pool(a, target, tau=0.1):
    """The current rule's eligible set: under tau, the victim predicts the given label, given label = target."""
    lab = a["sus_label"]
    return np.flatnonzero((a["sus_score"] < tau) & (a["sus_v_prob"].argmax(1) == lab) & (lab == target))


def rules(a, target, k=32):
    """Candidate rules; each returns k suspect row indices. Reads no oracle flag."""
    lab, score = a["sus_label"], a["sus_score"]
    pool = _pool(a, target)
    out = {}
    by_score = pool[np.argsort(score[pool], kind="stable")]
    out["current"] = by_score[:k]
    # (a) directional: the DMM still gives the target high log-odds (no saturation of probabilities)
    dm = _margin(a["sus_d_prob"], lab)
    out["dmm_margin"] = pool[np.argsort(-dm[pool], kind="stable")][:k]
    vm = _margin(a["sus_v_prob"], lab)
    out["logit_shift"] = pool[np.argsort(vm[pool] - dm[pool], kind="stable")][:k]
    # (a') calibrated against the clean reference rows of the target class: rank of DMM margin among them
    ref_t = a["ref_label"] == target
    ref_dm = _margin(a["ref_d_prob"][ref_t], a["ref_label"][ref_t])
    out["dmm_margin_vs_ref"] = pool[np.argsort(-(np.searchsorted(np.sort(ref_dm), dm[pool])), kind="stable")][:k]
    # chapter 4's exercise: gate on the victim's confidence, gamma from the clean reference rows under tau
    ref_low = a["ref_score"] < 0.1
    ref_conf = a["ref_v_prob"][np.arange(len(ref_low)), a["ref_label"]][ref_low]
    conf = a["sus_v_prob"][pool, target]
    for q in (0.9, 1.0):
        gamma = np.quantile(ref_conf, q) if len(ref_conf) else 0.0
        gated = pool[conf >= gamma]
        out[f"victim_conf_gate_q{q}"] = gated[np.argsort(score[gated], kind="stable")][:k]
    # (a'') the DMM margin gated above the clean reference rows of the target class
    for q in (0.99, 1.0):
        gated = pool[dm[pool] > np.quantile(ref_dm, q)]
        out[f"dmm_margin_gate_q{q}"] = gated[np.argsort(-dm[gated], kind="stable")][:k]
    for space in ("v_cls", "v_mean", "d_cls"):
        x = _unit(a[f"sus_{space}"])
        r = _unit(a[f"ref_{space}"][ref_t])
        for m in (64, 128, len(pool)):
            top = by_score[:m]
            # (b) robust centroid of the top-m lowest-disagreement candidates; keep the nearest k
            centre = np.median(x[top], axis=0)
            for _ in range(3):  # re-centre on the closer half
                d = np.linalg.norm(x[top] - centre, axis=1)
                centre = np.median(x[top][d <= np.median(d)], axis=0)
            d = np.linalg.norm(x[top] - centre, axis=1)
            out[f"centroid_{space}_M{m if m != len(pool) else 'all'}"] = top[np.argsort(d, kind="stable")][:k]
        # (b') density of the candidates relative to clean reference rows of the target class (kNN ratio)
        sims_ref = x[pool] @ r.T
        sims_pool = x[pool] @ x[pool].T
        np.fill_diagonal(sims_pool, -np.inf)
        kk = 5
        d_ref = 1 - np.sort(sims_ref, 1)[:, -kk:].mean(1)
        d_pool = 1 - np.sort(sims_pool, 1)[:, -kk:].mean(1)
        out[f"knn_ratio_{space}"] = pool[np.argsort(-(d_ref - d_pool), kind="stable")][:k]
        out[f"far_from_ref_{space}"] = pool[np.argsort(-d_ref, kind="stable")][:k]
    return out


def compare(names=None):
    names = names or sorted(p.stem for p in OUT.glob("*.npz"))
    table = {}
    for name in names:
        a, meta = _load(name)
        poison = a["sus_poison"]
        kept, info = _current(a)
        target = info.get("inferred_target")
        row = {"_target_true": meta["target_label"], "_inferred": target, "_pool": int(len(_pool(a, target))),
               "_pool_precision": round(float(poison[_pool(a, target)].mean()), 3),
               "library_none": [round(float(poison[kept].mean()), 3), round(float(poison[kept].sum() / poison.sum()), 3)]}
        kept, info = _current(a, refine="direction")
        row["_info_direction"] = {k: info[k] for k in ("dmm_log_odds_kept", "n_above_clean_reference")}
        row["library_direction"] = [round(float(poison[kept].mean()), 3), round(float(poison[kept].sum() / poison.sum()), 3)]
        for rule, rows in rules(a, target).items():
            row[rule] = [len(rows)] if len(rows) < 32 else []
            row[rule] += [round(float(poison[rows].mean()), 3), round(float(poison[rows].sum() / poison.sum()), 3)]
        table[name] = row
    (OUT / "rules.json").write_text(json.dumps(table, indent=1))
    keys = list(next(iter(table.values())))
    print(f"{'rule':28s}" + "".join(f"{n:>18s}" for n in table))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{str(table[n][k]):>18s}" for n in table))


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        for c in sys.argv[2:]:
            dump(c)
    else:
        compare(sys.argv[2:] or None)

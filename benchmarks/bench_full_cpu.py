"""A full-scale cell (victim + bedkd-fixed) with today's full-scale settings vs the settings before, side by side.

Before: the victim trains three epochs of shuffled batches of 32, and bedkd-fixed runs all 40 trust batches of
shuffled rows in each of its 50 AKD epochs. Now (the `full` scale and the `fixed` preset): one epoch of
length-grouped batches of 16; 20 trust batches per AKD epoch taken in turn from length-grouped batches, and AKD
stops once its epoch rule's pick has not improved for 10 epochs (`patience`). Same poisoned rows, clean
pool, test sets and seeds; both victims are trained here in a fresh cache, so nothing is reused. Prints seconds,
CACC and ASR per side, the clean floor (a clean victim with today's settings), the speed-up and whether the
quality holds (defended CACC within 1 point of before, and not more than 1 point lower; both defended ASRs within
the floor + 5 points).

    python benchmarks/bench_full_cpu.py [--dataset sst2] [--attack addsent] [--scale full] \\
        [--json results/benchmarks/full-cpu.json]

--scale quick runs the same comparison at quick scale in minutes (a rehearsal; the target is for full scale).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from bedkd_core.attacks import AttackConfig
from bedkd_core.experiments import clean_floor, defense_config, prepare, run_defense
from bedkd_core.metrics import evaluate
from bedkd_core.store import provenance, write_json_atomic
from bedkd_core.victim import get_victim

BEFORE_VICTIM = dict(epochs=3, batch_size=32, batching="shuffle")
BEFORE_BEDKD = dict(preset="fixed", batching="shuffle", trust_batches=None, patience=None)


def run_side(prepared, *, victim, options: dict) -> dict:
    """Evaluate `victim`, run bedkd-fixed with `options` on it, and time both."""
    started = time.perf_counter()
    victim_metrics = evaluate(victim.model, victim.tokenizer, clean_test=prepared.clean_test,
                              triggered_test=prepared.triggered_test, target_label=prepared.asr_target,
                              cache=victim.path)
    victim_eval = time.perf_counter() - started
    config = defense_config("bedkd", scale=prepared.scale.name, target_label=prepared.attack.target_label,
                            options=options)
    differs = {k: getattr(config, k) for k, v in options.items() if getattr(config, k) != v}
    if differs:  # the side must run what it says it runs
        raise RuntimeError(f"the defense config did not take the options {options}: it has {differs}")
    run = run_defense(prepared=dataclasses.replace(prepared, victim=victim), name="bedkd", config=config)
    seconds = {"victim_train": round(victim.seconds, 1), "victim_eval": round(victim_eval, 1),
               "defense": round(run.seconds, 1), "defense_eval": round(run.eval_seconds, 1)}
    seconds["cell"] = round(sum(seconds.values()), 1)
    return {"victim_config": victim.config.asdict(), "defense_config": config.asdict(), "seconds": seconds,
            "victim": {k: round(victim_metrics[k], 4) for k in ("cacc", "asr")},
            "defended": {k: round(run.metrics[k], 4) for k in ("cacc", "asr")},
            "detection": run.detection, "selected_epoch": run.summary.get("selected_epoch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--attack", default="addsent")
    parser.add_argument("--scale", default="full", choices=["quick", "full"])
    parser.add_argument("--json", type=Path, help="write the comparison, with provenance, to this file")
    args = parser.parse_args()
    start_info = provenance()
    os.environ["BEDKD_CACHE"] = tempfile.mkdtemp(prefix="bench-full-cpu-")  # both victims trained here
    prepared = prepare(dataset=args.dataset, attack=AttackConfig(name=args.attack), scale=args.scale, seed=0)
    before_config = dataclasses.replace(prepared.victim_config, **BEFORE_VICTIM)
    before_victim = get_victim(train=prepared.poisoned.data, num_labels=prepared.splits.num_classes,
                               config=before_config, describe={"benchmark": "full-cpu before"})
    sides = {"now": run_side(prepared, victim=prepared.victim, options={"preset": "fixed"}),
             "before": run_side(prepared, victim=before_victim, options=BEFORE_BEDKD)}
    started = time.perf_counter()
    floor = clean_floor(prepared)
    floor_seconds = time.perf_counter() - started
    now, before = sides["now"], sides["before"]
    speedup = before["seconds"]["cell"] / now["seconds"]["cell"]
    cacc_change = now["defended"]["cacc"] - before["defended"]["cacc"]
    quality = {"cacc_within_1_point": abs(cacc_change) <= 0.01, "cacc_not_1_point_lower": cacc_change >= -0.01,
               "now_asr_within_floor_5": now["defended"]["asr"] <= floor["asr"] + 0.05,
               "before_asr_within_floor_5": before["defended"]["asr"] <= floor["asr"] + 0.05}
    for name, side in sides.items():
        print(f"{name:6s} cell {side['seconds']['cell']:7.1f} s {side['seconds']}  victim {side['victim']}  "
              f"defended {side['defended']}  epoch {side['selected_epoch']}")
    print(f"clean floor ASR {floor['asr']:.3f} (CACC {floor['cacc']:.3f}, {floor_seconds:.0f} s)   "
          f"speed-up {speedup:.2f}x   quality {quality}")
    if args.json:
        write_json_atomic(args.json, {
            "dataset": args.dataset, "attack": args.attack, "scale": args.scale, "seed": 0,
            "sizes": {"victim_train": len(prepared.poisoned.data), "clean_test": len(prepared.clean_test),
                      "triggered_test": len(prepared.triggered_test), "clean_pool": len(prepared.clean_pool)},
            "threads": torch.get_num_threads(), "sides": sides,
            "clean_floor": {**floor, "seconds": round(floor_seconds, 1)}, "speedup": round(speedup, 2),
            "quality": quality, "provenance": start_info})


if __name__ == "__main__":
    main()

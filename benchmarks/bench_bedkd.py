"""BeDKD as implemented vs BeDKD on the reference code's schedule, side by side in one process.

Reference schedule: the frozen teacher runs forward at every step, and the full clean and triggered test sets are
evaluated after every AKD epoch in file order (batches of 16, dynamic padding, no length sorting), as the reference
code does. As implemented: teacher outputs computed once per fixed batch, one length-sorted evaluation at the end.
Same victim, data, seed and hyperparameters; prints wall time, the ratio, peak memory and whether the final metrics
agree.

    python benchmarks/bench_bedkd.py [--akd-epochs N] [--scale quick] [--json results/benchmarks/bedkd.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import psutil
import torch

from bedkd_core.attacks import AttackConfig
from bedkd_core.defenses.bedkd import make_config, split_clean, train_dmm, agreement_scores, identify_poisoned, akd
from bedkd_core.experiments import prepare
from bedkd_core.store import provenance, write_json_atomic
from bedkd_core.metrics import accuracy, attack_success_rate, evaluate
from bedkd_core.training import tokenize


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 20 ms (CPU), or CUDA's peak allocation."""

    def __enter__(self):
        self.proc, self.peak, self.running = psutil.Process(), 0, True
        self.base = self.proc.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--akd-epochs", type=int, help="default: the preset's own")
    parser.add_argument("--scale", default="quick")
    parser.add_argument("--attack", default="badnets")
    parser.add_argument("--json", type=Path, help="also write the measurements with provenance to this file")
    args = parser.parse_args()
    prepared = prepare(dataset="sst2", attack=AttackConfig(name=args.attack), scale=args.scale, seed=0)
    teacher, tokenizer = prepared.victim.model, prepared.victim.tokenizer
    data = prepared.defender_data()
    preset = "quick" if args.scale == "quick" else "fixed"
    base = make_config(preset=preset, **({"akd_epochs": args.akd_epochs} if args.akd_epochs else {}))
    dmm_clean, akd_clean = split_clean(data.clean, num_classes=2, dmm_per_class=base.dmm_per_class,
                                       clean_per_class=base.clean_per_class, seed=base.seed)
    dmm = train_dmm(teacher, tokenizer, dmm_clean, num_classes=2, config=base)  # shared: AKD is what differs
    scores = agreement_scores(teacher, dmm, tokenizer, list(data.suspect["text"]))
    flagged, _ = identify_poisoned(scores=scores, labels=data.suspect["label"], n_rows=base.n_poison,
                                   config=dataclasses.replace(base, infer_target=False), num_classes=2)
    identified = data.suspect.select(flagged.tolist())
    full_clean, full_triggered = prepared.splits.test, prepared.triggered_test

    def evaluate_full(student):
        return evaluate(student, tokenizer, clean_test=full_clean, triggered_test=full_triggered,
                        target_label=prepared.attack.target_label)

    @torch.no_grad()
    def evaluate_in_file_order(student):  # the reference's per-epoch evaluation: unsorted batches of 16
        student.eval()
        predictions = {}
        for name, split in (("clean", full_clean), ("triggered", full_triggered)):
            texts, predicted = list(split["text"]), []
            for start in range(0, len(texts), base.batch_size):
                batch = tokenize(tokenizer, texts[start : start + base.batch_size], base.max_length)
                predicted += student(**batch).logits.argmax(-1).tolist()
            predictions[name] = predicted
        return {"cacc": accuracy(predictions["clean"], full_clean["label"]),
                "asr": attack_success_rate(predictions["triggered"], target_label=prepared.attack.target_label,
                                           source_labels=full_triggered["source_label"])}

    results = {}
    for name, config, every_epoch in [
        ("reference schedule", dataclasses.replace(base, cache_teacher=False), True),
        ("as implemented", base, False),
    ]:
        with PeakRSS() as memory:
            started = time.perf_counter()
            on_epoch = (lambda epoch, student: evaluate_in_file_order(student)) if every_epoch else None
            student, _ = akd(teacher, tokenizer, clean=akd_clean, poisoned=identified, config=config, on_epoch=on_epoch)
            final = evaluate_full(student)
            seconds = time.perf_counter() - started
        results[name] = {"seconds": round(seconds, 1), "peak_mib": round(memory.mib, 1), **final}
        print(f"{name:<20} {seconds:8.1f} s   peak +{memory.mib:7.1f} MiB   CACC {final['cacc']:.4f}  ASR {final['asr']:.4f}")
    ref, ours = results["reference schedule"], results["as implemented"]
    agree = abs(ref["cacc"] - ours["cacc"]) < 1e-9 and abs(ref["asr"] - ours["asr"]) < 1e-9
    print(f"speed-up: {ref['seconds'] / ours['seconds']:.2f}x   final metrics identical: {agree}")
    summary = {"akd_epochs": base.akd_epochs, "scale": args.scale, "attack": args.attack, "results": results,
               "reference_evaluation": "file order, batches of 16",
               "speedup": round(ref["seconds"] / ours["seconds"], 2), "identical_metrics": agree,
               "provenance": provenance(), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    print(json.dumps(summary, indent=1))
    if args.json:
        write_json_atomic(args.json, summary)


if __name__ == "__main__":
    main()

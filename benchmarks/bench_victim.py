"""Victim-training throughput: this library's dynamic padding vs padding every batch to max_length, side by side.

    python benchmarks/bench_victim.py [--rows 256] [--batch-size 32]

With --compare-quick, it trains the quick SST-2 BadNets victim twice from the same poisoned rows instead: with the
quick scale's settings (one epoch of length-grouped batches of 16) and with the settings quick used before (two
epochs of shuffled batches of 32), and prints seconds, CACC and ASR side by side (--json writes them with
provenance).

    python benchmarks/bench_victim.py --compare-quick [--json results/benchmarks/quick-victim.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import dataclasses
from pathlib import Path

from bedkd_core.attacks import AttackConfig
from bedkd_core.data import load_task
from bedkd_core.experiments import prepare
from bedkd_core.store import provenance, write_json_atomic
from bedkd_core.metrics import evaluate
from bedkd_core.models import device, load_classifier
from bedkd_core.training import seed_everything, train_classifier


def samples_per_second(texts, labels, *, padding: str, batch_size: int, max_length: int) -> float:
    seed_everything(0)
    model, tokenizer = load_classifier("minilm", num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=padding, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device())
        target = torch.tensor(labels[start : start + batch_size], device=device())
        torch.nn.functional.cross_entropy(model(**batch).logits, target).backward()
        optimizer.step()
        optimizer.zero_grad()
    return len(texts) / (time.perf_counter() - started)


def compare_quick(json_path: Path | None) -> None:
    """The quick victim with the quick scale's settings vs two shuffled epochs of 32, same rows, same seed."""
    start_info = provenance()
    prepared = prepare(dataset="sst2", attack=AttackConfig(name="badnets"), scale="quick", seed=0)
    settings = {"quick now": prepared.victim_config,
                "quick before": dataclasses.replace(prepared.victim_config, epochs=2, batch_size=32,
                                                    batching="shuffle")}
    rows = {}
    for name, config in settings.items():
        seed_everything(config.seed)
        model, tokenizer = load_classifier(config.model, num_labels=prepared.splits.num_classes)
        started = time.perf_counter()
        train_classifier(model, tokenizer, prepared.poisoned.data, config=config)
        seconds = time.perf_counter() - started
        metrics = evaluate(model, tokenizer, clean_test=prepared.clean_test, triggered_test=prepared.triggered_test,
                           target_label=prepared.attack.target_label)
        rows[name] = {"config": config.asdict(), "seconds": round(seconds, 1), "cacc": round(metrics["cacc"], 3),
                      "asr": round(metrics["asr"], 3)}
        print(f"{name:13s} {config.epochs} epoch(s) of {config.batching} batches of {config.batch_size:2d}: "
              f"{seconds:6.1f} s   CACC {metrics['cacc']:.3f}   ASR {metrics['asr']:.3f}")
    print(f"time ratio, before / now: {rows['quick before']['seconds'] / rows['quick now']['seconds']:.2f}x")
    if json_path:
        write_json_atomic(json_path, {"dataset": "sst2", "attack": "badnets", "train_rows": len(prepared.poisoned.data),
                                      "test_rows": {"clean": len(prepared.clean_test),
                                                    "triggered": len(prepared.triggered_test)},
                                      "threads": torch.get_num_threads(), "runs": rows, "provenance": start_info})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--compare-quick", action="store_true", help="the quick victim's settings, now vs before")
    parser.add_argument("--json", type=Path, help="with --compare-quick: write the comparison to this file")
    args = parser.parse_args()
    if args.compare_quick:
        compare_quick(args.json)
        return
    train = load_task("sst2").train.select(range(args.rows))
    texts, labels = list(train["text"]), list(train["label"])
    rates = {padding: samples_per_second(texts, labels, padding=padding, batch_size=args.batch_size,
                                         max_length=args.max_length)
             for padding in ("max_length", "longest")}
    print(f"pad to max_length: {rates['max_length']:.1f} samples/s   dynamic padding: {rates['longest']:.1f} samples/s"
          f"   ratio {rates['longest'] / rates['max_length']:.2f}x")
    print(json.dumps({"rows": args.rows, "batch_size": args.batch_size, "max_length": args.max_length,
                      "samples_per_second": rates, "threads": torch.get_num_threads(),
                      "provenance": provenance()}, indent=1))


if __name__ == "__main__":
    main()

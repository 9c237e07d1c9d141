"""Victim-training throughput: this library's dynamic padding vs padding every batch to max_length, side by side.

    python benchmarks/bench_victim.py [--rows 256] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from bedkd_core.data import load_task
from bedkd_core.experiments import provenance
from bedkd_core.victim import device, load_classifier, seed_everything


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
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

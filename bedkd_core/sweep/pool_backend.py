"""The process-pool backend of `run_sweep`: cells in worker processes of one machine (the standard library's
`concurrent.futures`), started in the order `schedule` decides; for a lent GPU box, where Ray does not fit.

Workers are spawned, not forked (CUDA cannot be shared across a fork), and share the machine's CPU threads
evenly; on a GPU they share the one device.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from .grid import Cell
from .runner import execute_cell
from .schedule import record_lost_worker, schedule


def _init_worker(threads: int) -> None:
    """Each worker gets its share of the CPU threads and no progress bars (they would interleave)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["TQDM_DISABLE"] = "1"
    import torch

    torch.set_num_threads(threads)


def run_pool(todo: list[Cell], *, workers: int, kwargs: dict, on_done) -> None:
    """Run `todo` in `workers` processes; `on_done(outcome)` returns True to start no more cells."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:

        broken = []  # a worker died: the pool takes no more cells; the sweep stops and a rerun resumes

        def ended(futures):
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            out = []
            for future in done:
                try:
                    out.append((future, future.result(), None))
                except Exception as err:  # the worker died (killed, out of memory)
                    if isinstance(err, BrokenProcessPool):
                        broken.append(err)
                    out.append((future, None, err))
            return out

        schedule(todo, workers=workers, start=lambda cell: pool.submit(execute_cell, cell, **kwargs), wait=ended,
                 on_done=lambda outcome: on_done(outcome) or bool(broken),
                 lost=lambda cell, err: record_lost_worker(cell, err, kwargs))

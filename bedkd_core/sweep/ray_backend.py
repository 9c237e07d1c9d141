"""The Ray backend of `run_sweep`: cells as Ray tasks on a cluster, started in the order `schedule` decides."""
from __future__ import annotations

import os

from .grid import Cell
from .runner import SweepError, execute_cell
from .schedule import record_lost_worker, schedule


def run_ray(todo: list[Cell], *, workers: int, kwargs: dict, on_done, cpus_per_cell: float | None,
            gpus_per_cell: float | None) -> None:
    """Run `todo` as Ray tasks, `workers` at a time; `on_done(outcome)` returns True to start no more cells."""
    try:
        import ray
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'bedkd_core[ray]' (or: pip install ray)") from None
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        local = {} if address else {"num_cpus": max(workers, os.cpu_count() or 1)}
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level="WARNING", **local)
        started_here = True
    try:
        resources = ray.cluster_resources()
        if cpus_per_cell is None:
            cpus_per_cell = max(1, int(resources.get("CPU", 1) // workers))
        if gpus_per_cell is None:
            gpus_per_cell = 1 if resources.get("GPU", 0) >= 1 else 0
        env = {k: v for k, v in os.environ.items() if k.startswith(("BEDKD_", "HF_", "TRANSFORMERS_"))}
        env["TQDM_DISABLE"] = "1"  # the driver shows the progress; per-epoch bars from workers would interleave
        task = ray.remote(execute_cell).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0,
                                                runtime_env={"env_vars": env})

        def wait(refs):
            ready, _ = ray.wait(refs, num_returns=1)
            ended = []
            for ref in ready:
                try:
                    ended.append((ref, ray.get(ref), None))
                except Exception as err:  # the worker died (killed, out of memory): recorded like a failure
                    ended.append((ref, None, err))
            return ended

        schedule(todo, workers=workers, start=lambda cell: task.remote(cell, **kwargs), wait=wait, on_done=on_done,
                 lost=lambda cell, err: record_lost_worker(cell, err, kwargs))
    finally:
        if started_here:
            ray.shutdown()

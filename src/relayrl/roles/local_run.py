"""``relayrl train``: the trainer and a few rollout-worker processes on this machine.

Workers are separate processes (the ``spawn`` start method) that talk to the trainer over the same
ZeroMQ transport remote workers use, on loopback here, so one code path serves a laptop and a
cluster. A worker process imports only this module's top and the actor side (:mod:`relayrl.worker`,
:mod:`relayrl.transport.worker_end`): the trainer, pandas and the checkpoints stay in the trainer.

Stopping: Ctrl+C or SIGTERM in the trainer saves a checkpoint and stops the workers (exit code 130);
a worker never outlives its trainer, even one killed with SIGKILL (it watches the parent process).
"""
from __future__ import annotations

import multiprocessing
import signal
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable

from .common import WatchedInterface, open_trainer, split_random_steps, stop_signals, trainer_transport

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["run_local", "worker_process_main", "stop_requested"]


def stop_requested(stop_event, check_interval: float = 0.5) -> Callable[[], bool]:
    """``should_stop()`` for a local worker process: true once the trainer sets ``stop_event`` or once
    the trainer process is gone (killed with SIGKILL, or crashed before it could set the event), so a
    worker never outlives its trainer. The parent's liveness is checked at most every
    ``check_interval`` seconds (a ``select`` on its sentinel)."""
    parent = multiprocessing.parent_process()
    state = {"next": 0.0, "gone": False}

    def should_stop() -> bool:
        if stop_event.is_set() or state["gone"]:
            return True
        now = time.monotonic()
        if parent is not None and now >= state["next"]:
            state["next"] = now + check_interval
            state["gone"] = not parent.is_alive()
        return state["gone"]

    return should_stop


def worker_process_main(env_id: str, actor_factory, buffer_endpoint: str, weights_endpoint: str,
                        worker_id: str, seed: int, workers: dict, stop_event,
                        random_steps: int = 0) -> None:
    """Entry point of one local worker process (stopped through ``stop_event`` or by its pid)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the trainer's to handle
    import torch

    from ..config import WorkersConfig
    from ..transport.worker_end import ZmqWorkerClient
    from ..worker import RolloutWorker

    torch.set_num_threads(1)
    client = ZmqWorkerClient(buffer_endpoint, weights_endpoint, worker_id)
    worker = RolloutWorker.from_settings(env_id, actor_factory, client, WorkersConfig(**workers),
                                         worker_id=worker_id, seed=seed, random_steps=random_steps)
    stopping = stop_requested(stop_event)
    should_stop = lambda: stopping() or client.trainer_finished  # noqa: E731 (the run is over)
    try:
        if worker.wait_for_first_weights(should_stop=should_stop):
            worker.run(should_stop=should_stop)
    finally:
        worker.close()
        client.close()


def run_local(config: "RunConfig", progress: bool = True, print_tables: bool = True) -> list:
    """Train ``config`` with ``config.workers.count`` local worker processes; return the rows."""
    if config.workers.count == 0:
        raise ValueError("relayrl train needs at least one local worker (--workers N); to train only "
                         "from remote workers, run 'relayrl trainer'")
    config = config.with_run_dir("train")  # runs/<env> unless given
    trainer = open_trainer(config, progress=progress, print_tables=print_tables, role="train")
    if trainer is None:
        return []
    transport = trainer_transport(trainer, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    count = config.workers.count
    random_shares = split_random_steps(config.workers.random_steps, trainer.training.total_samples, count)
    processes = [
        ctx.Process(target=worker_process_main, name=f"relayrl-worker-{i}", daemon=True,
                    args=(config.env, config.actor_factory(), transport.buffer_endpoint,
                          transport.weights_endpoint, f"local-{i}", config.seed + 1 + i,
                          asdict(config.workers), stop, random_shares[i]))
        for i in range(count)
    ]
    try:
        with stop_signals():  # SIGTERM as Ctrl+C: a checkpoint, then the workers are stopped
            for p in processes:
                p.start()
            return trainer.run(WatchedInterface(transport, processes))
    finally:
        stop.set()
        deadline = time.monotonic() + 10.0
        for p in processes:
            if p.pid is not None:
                p.join(timeout=max(0.1, deadline - time.monotonic()))
        for p in processes:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
        transport.close()

"""``relayrl train``: the trainer and a few rollout-worker processes on this machine.

Workers are separate processes that talk to the trainer over the same ZeroMQ transport remote
workers use (on loopback here), so one code path serves a laptop and a cluster.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from dataclasses import asdict

from .config import RunConfig, WorkersConfig

log = logging.getLogger("relayrl")


def stop_requested(stop_event, check_interval: float = 0.5):
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


def terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM handler of the trainer-side commands: stop as on Ctrl+C (a checkpoint, then exit)."""
    raise KeyboardInterrupt


def threading_is_main() -> bool:
    """Signal handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


def worker_process_main(env_id: str, actor_factory, buffer_endpoint: str, weights_endpoint: str,
                        worker_id: str, seed: int, workers: dict, stop_event) -> None:
    """Entry point of one local worker process (stopped through ``stop_event`` or by its pid)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the trainer's to handle
    import torch

    from .transport.zmq_transport import ZmqWorkerClient
    from .worker import RolloutWorker

    torch.set_num_threads(1)
    cfg = WorkersConfig(**workers)
    client = ZmqWorkerClient(buffer_endpoint, weights_endpoint, worker_id)
    worker = RolloutWorker(env_id, actor_factory, client, worker_id=worker_id,
                           max_samples_per_episode=cfg.max_samples_per_episode,
                           test_episode_interval=cfg.test_episode_interval,
                           buffer_steps=cfg.buffer_steps, pause_mid_episode=cfg.pause_mid_episode,
                           seed=seed)
    should_stop = stop_requested(stop_event)
    try:
        while worker.policy_version < 0 and not should_stop():
            worker.update_weights(0.5)
        worker.run(should_stop=should_stop)
    finally:
        worker.close()
        client.close()


class LocalWorkersInterface:
    """The trainer-side transport, plus a check that the local worker processes are alive (so a
    crashed worker stops the run with a clear error instead of an endless wait)."""

    def __init__(self, transport, processes):
        self.transport = transport
        self.processes = processes

    def retrieve_buffer(self):
        return self.transport.retrieve_buffer()

    def broadcast_model(self, actor):
        self.transport.broadcast_model(actor)

    def report_progress(self, **counters):
        self.transport.report_progress(**counters)

    def wait_for_data(self, timeout: float) -> bool:
        if self.processes and not any(p.is_alive() for p in self.processes):
            codes = [p.exitcode for p in self.processes]
            raise RuntimeError(f"all {len(self.processes)} worker processes exited (exit codes {codes});"
                               " their errors are printed above")
        return self.transport.wait_for_data(timeout)


def run_local(config: RunConfig, progress: bool = True, print_tables: bool = True):
    """Train ``config`` with ``config.workers.count`` local worker processes; return the rows."""
    from .roles import TransportAccounting
    from .trainer import Trainer, actor_factory
    from .transport.zmq_transport import ZmqTrainerInterface

    trainer = Trainer(config, progress=progress, print_tables=print_tables)
    if trainer.resumed_from is not None:
        log.warning("resuming %s from epoch %d", config.run_dir, trainer.resumed_from)
    if trainer.done:
        log.warning("%s already holds %d finished epochs; raise --epochs to train further",
                    config.run_dir, trainer.training.epoch)
        return []
    if config.workers.count == 0:
        raise ValueError("relayrl train needs at least one local worker (--workers N); to train only "
                         "from remote workers, run 'relayrl trainer'")
    training = trainer.training
    transport = ZmqTrainerInterface(
        "tcp://127.0.0.1:0", "tcp://127.0.0.1:0",
        env_steps_per_update=config.workers.env_steps_per_update,
        initial_samples=max(training.start_training, training.batch_size),
        slack_samples=config.workers.slack_samples)
    trainer.row_extras = TransportAccounting(transport).row_stats  # rows get the transport's accounting (roles.TRANSPORT_STATS_KEYS)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    processes = [
        ctx.Process(target=worker_process_main, name=f"relayrl-worker-{i}", daemon=True,
                    args=(config.env, actor_factory(config), transport.buffer_endpoint,
                          transport.weights_endpoint, f"local-{i}", config.seed + 1 + i,
                          asdict(config.workers), stop))
        for i in range(config.workers.count)
    ]
    # SIGTERM (kill, a batch scheduler, a container stop) is handled like Ctrl+C: the trainer
    # saves a checkpoint and the workers are stopped, instead of dying with them left behind
    previous = None
    if threading_is_main():
        previous = signal.signal(signal.SIGTERM, terminate_as_interrupt)
    try:
        for p in processes:
            p.start()
        return trainer.run(LocalWorkersInterface(transport, processes))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        stop.set()
        deadline = time.monotonic() + 10.0
        for p in processes:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
        for p in processes:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
        transport.close()

"""The ``Trainer`` owns a run: it builds (or resumes) the ``TorchTrainingOffline``, runs epochs,
checkpoints after each one, and feeds the loggers and the progress bar.

A run directory holds::

    checkpoints/epoch-000003/   the newest checkpoints (pickle-free, atomic; see relayrl.checkpoint)
    checkpoints/latest          the name of the newest complete checkpoint
    config.json                 the configuration the run was started with
    stats.csv, stats.jsonl      one row per round
    tensorboard/                TensorBoard events
    actor.npz                   the latest policy weights (load with ActorModule.load)

Running the same command again resumes from ``checkpoints/latest``: counters, agent, optimisers and
replay memory continue where they stopped.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from pathlib import Path

import pandas as pd
import torch

from .algorithms import DEFAULT_ALGORITHM
from .checkpoint import CheckpointError, load_latest, save_checkpoint
from .config import RunConfig
from .interface import check_interface
from .loggers import CsvLogger, JsonlLogger, TensorBoardLogger, format_table
from .prioritized import configured_memory_cls
from .system import available_cores
from .training_offline import TorchTrainingOffline

log = logging.getLogger("relayrl")

CHECKPOINT_FORMAT = "relayrl.trainer/1"


def default_torch_threads(parallel_update: bool) -> int:
    """The trainer's torch threads when ``training.torch_threads`` is 0: one core is left to the
    workers, the transport and the OS, and an agent that runs two halves of its update in two
    threads (its ``parallel_update`` attribute, see :mod:`relayrl.algorithms.two_threads`) gets
    half of the rest for each of them."""
    spare = max(1, available_cores() - 1)
    return max(1, spare // 2) if parallel_update else spare


class Trainer:
    """Runs ``config`` in ``config.run_dir`` against an interface (see :mod:`relayrl.interface`)."""

    def __init__(self, config: RunConfig, progress: bool = True, print_tables: bool = True):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.progress = progress
        self.print_tables = print_tables
        self.spaces = config.env_spaces()  # a clear ValueError for spaces the algorithm cannot use
        torch.manual_seed(config.seed)
        t = config.training
        self.training = TorchTrainingOffline(
            env_cls=self.spaces,
            memory_cls=configured_memory_cls(config.memory, gamma=getattr(config.agent, "gamma", 0.99),
                                             seed=config.seed),
            training_agent_cls=functools.partial(config.algorithm_spec.agent_class(), config=config.agent),
            epochs=t.epochs, rounds=t.rounds, steps=t.steps,
            update_model_interval=t.update_model_interval,
            update_buffer_interval=t.update_buffer_interval,
            max_training_steps_per_env_step=t.max_training_steps_per_env_step,
            sleep_between_buffer_retrieval_attempts=t.sleep_between_buffer_retrieval_attempts,
            profiling=t.profiling, start_training=t.start_training, device=t.device)
        self.training.prefetch = t.prefetch
        self.training.ratio_from_start = t.ratio_from_start
        self.torch_threads = t.torch_threads or default_torch_threads(
            getattr(self.training.agent, "parallel_update", False))
        torch.set_num_threads(self.torch_threads)
        self.resumed_from: int | None = None
        #: Optional ``() -> dict`` whose items are added to every statistics row before it is
        #: logged (the transport's per-worker accounting, for instance).
        self.row_extras = None
        self._resume()

    # --- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _resume(self) -> None:
        state = load_latest(self.checkpoint_dir)  # raises CheckpointError with a clear message
        if state is None:
            return
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint in {self.checkpoint_dir} has format "
                                  f"{state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        saved_env = state.get("config", {}).get("env")
        if saved_env != self.config.env:
            raise CheckpointError(f"{self.run_dir} holds a run on {saved_env!r}, not {self.config.env!r}:"
                                  " use another --run-dir, or the same --env to resume it")
        saved_algorithm = state.get("config", {}).get("algorithm", DEFAULT_ALGORITHM)
        if saved_algorithm != self.config.algorithm:
            raise CheckpointError(f"{self.run_dir} holds a run of algorithm {saved_algorithm!r}, not "
                                  f"{self.config.algorithm!r}: use another --run-dir, or --algorithm "
                                  f"{saved_algorithm} to resume it")
        try:
            self.training.load_state_dict(state["training"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint in {self.checkpoint_dir} does not fit this "
                                  f"configuration ({exc}); use another --run-dir") from exc
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.resumed_from = self.training.epoch

    def save(self, partial: bool = False) -> Path:
        """Checkpoint now (after an epoch, or ``partial`` when interrupted inside one)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                 "training": self.training.state_dict(), "torch_rng": torch.get_rng_state()}
        name = f"epoch-{self.training.epoch:06d}" + ("-partial" if partial else "")
        path = save_checkpoint(self.checkpoint_dir, name, state, keep=self.config.keep_checkpoints)
        self.training.agent.get_actor().save(self.run_dir / "actor.npz")
        return path

    @property
    def done(self) -> bool:
        return self.training.epoch >= self.training.epochs

    # --- the run ---------------------------------------------------------------------------------
    def run(self, interface) -> list[pd.Series]:
        """Run the remaining epochs; checkpoint after each; save and re-raise on Ctrl+C."""
        check_interface(interface)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        loggers = [CsvLogger(self.run_dir / "stats.csv"), JsonlLogger(self.run_dir / "stats.jsonl"),
                   TensorBoardLogger(self.run_dir / "tensorboard")]
        training = self.training
        total = training.epochs * training.rounds * training.steps
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=min(training.epoch * training.rounds * training.steps, total),
                       unit="upd", dynamic_ncols=True, file=sys.stderr, desc="training")
        rows: list[pd.Series] = []
        interface.broadcast_model(training.agent.get_actor())  # workers start from the current policy
        try:
            while not self.done:
                rows.extend(training.run_epoch(interface, on_round=lambda row: self._log(row, loggers, bar)))
                path = self.save()
                log.info("epoch %d done, checkpoint %s", training.epoch, path)
        except KeyboardInterrupt:
            path = self.save(partial=True)
            self._write(bar, f"interrupted: saved {path}; run the same command to resume")
            raise
        finally:
            training.close()
            if bar is not None:
                bar.close()
            for logger in loggers:
                logger.close()
        return rows

    def _log(self, row: pd.Series, loggers, bar) -> None:
        if self.row_extras is not None:
            for key, value in self.row_extras().items():
                row[key] = value  # in place: the rows run() returns carry the keys too
        for logger in loggers:
            logger.log(row)
        if self.print_tables:
            self._write(bar, format_table(row))
        if bar is not None:
            bar.update(self.training.steps)
            ret = row.get("return_test")
            if ret is None or (isinstance(ret, float) and math.isnan(ret)):
                ret = row.get("return_train")
            bar.set_postfix(epoch=int(row["epoch"]), round=int(row["round"]),
                            env_steps=int(row["total_samples"]),
                            ret="-" if ret is None or math.isnan(ret) else f"{ret:.1f}", refresh=False)

    @staticmethod
    def _write(bar, text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

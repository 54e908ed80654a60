"""The ``Trainer`` owns a run: it builds (or resumes) the ``TorchTrainingOffline``, runs epochs,
checkpoints after each one, and feeds the loggers and the progress bar.

A run directory holds::

    checkpoints/epoch-000003/   the newest checkpoints (pickle-free, atomic; see relayrl.checkpoint)
    checkpoints/latest          the name of the newest complete checkpoint
    config.json                 the configuration the run was started with
    stats.csv, stats.jsonl      one row per round
    tensorboard/                TensorBoard events
    wandb_run_id, wandb/        with ``wandb_project``: the W&B run's id (kept for resuming) and files
    actor.npz                   the latest policy weights (load with ActorModule.load)

Running the same command again resumes from ``checkpoints/latest``: counters, agent, optimisers and
replay memory continue where they stopped (from the newest complete checkpoint, with a warning, if
the latest is corrupt). Without ``run_dir`` the folder is derived from the environment
(:func:`relayrl.config.default_run_dir`).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
from pathlib import Path

import pandas as pd
import torch

from .algorithms import DEFAULT_ALGORITHM
from .checkpoint import CheckpointError, load_latest, save_checkpoint
from .config import RunConfig, default_run_dir, env_dir_name
from .interface import check_interface
from .loggers import (CsvLogger, ConsoleTable, JsonlLogger, TensorBoardLogger, WandbLogger, drop_rows_after,
                      format_integer, format_return, import_wandb, logging_around_bar)
from .prioritized import configured_memory_cls
from .round_stats import INTEGER_KEYS
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


def check_run_dir(run_dir: Path, suggestion) -> None:
    """A clear ``ValueError`` if ``run_dir`` cannot be a folder (it, or a folder above it, is a file),
    naming the ``--run-dir`` to pass instead (``suggestion()``)."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == run_dir else f"cannot be created: {path} is a file"
                raise ValueError(f"run directory {run_dir} {what}, not a folder: pass --run-dir {suggestion()} "
                                 "(or move the file away)")
            return


def _run_in(path: Path) -> tuple | None:
    """``(env, algorithm)`` of the run a folder holds (its config.json), or None if it holds none."""
    try:
        saved = json.loads((path / "config.json").read_text())
        return saved.get("env"), saved.get("algorithm", DEFAULT_ALGORITHM)
    except (OSError, ValueError, AttributeError):
        return None


def free_run_dir(base: str, env: str, algorithm: str, avoid: Path) -> str:
    """``base``, or ``base-2``, ``base-3``...: the first that is not ``avoid`` and is new, or
    an empty folder, or holds a run of this ``env`` and ``algorithm`` (to resume)."""
    for i in range(1, 1000):
        candidate = base if i == 1 else f"{base}-{i}"
        path = Path(candidate)
        if path.absolute() == avoid.absolute():
            continue
        if not path.exists():
            return candidate
        if path.is_dir():
            held = _run_in(path)
            if held == (env, algorithm) or (held is None and not (path / "checkpoints").exists()):
                return candidate
    return f"{base}-new"  # pragma: no cover


class Trainer:
    """Runs ``config`` in ``config.run_dir`` against an interface (see :mod:`relayrl.interface`).

    Without ``config.run_dir``, the folder is the default of ``role`` (``"train"``: runs/<env>,
    ``"trainer"``: runs/<env>-trainer), which the error messages' suggestions follow as well."""

    def __init__(self, config: RunConfig, progress: bool = True, print_tables: bool = True, *,
                 role: str = "train"):
        config = config.with_run_dir(role)
        if config.wandb_project is not None:
            import_wandb()  # fails now, naming the install command, if W&B is asked for but missing
        self.config = config
        self.role = role
        self.run_dir = Path(config.run_dir)
        check_run_dir(self.run_dir, self._suggest_run_dir)
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
        #: logged (the transport's per-worker accounting, for instance); its int values are
        #: written as integers.
        self.row_extras = None
        self.integer_keys = set(INTEGER_KEYS)
        self._resume()

    # --- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _suggest_run_dir(self, algorithm_too: bool = False) -> str:
        """A --run-dir that works for this configuration instead of :attr:`run_dir`."""
        base = default_run_dir(self.config.env, self.role)
        if algorithm_too:
            base += "-" + env_dir_name(self.config.algorithm_spec.name)
        return free_run_dir(base, self.config.env, self.config.algorithm, self.run_dir)

    def _resume(self) -> None:
        # a corrupt latest checkpoint: the newest complete one, with a warning (CheckpointError if none)
        state = load_latest(self.checkpoint_dir, fallback=True)
        if state is None:
            return
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint in {self.checkpoint_dir} has format "
                                  f"{state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        saved_env = state.get("config", {}).get("env")
        if saved_env != self.config.env:
            raise CheckpointError(f"{self.run_dir} holds a run on {saved_env!r}, not {self.config.env!r}: "
                                  f"to train {self.config.env!r}, pass --run-dir {self._suggest_run_dir()} "
                                  f"(or --env {saved_env} to resume the run in {self.run_dir})")
        saved_algorithm = state.get("config", {}).get("algorithm", DEFAULT_ALGORITHM)
        if saved_algorithm != self.config.algorithm:
            raise CheckpointError(f"{self.run_dir} holds a run of algorithm {saved_algorithm!r}, not "
                                  f"{self.config.algorithm!r}: pass --run-dir {self._suggest_run_dir(True)} "
                                  f"(or --algorithm {saved_algorithm} to resume the run in {self.run_dir})")
        try:
            self.training.load_state_dict(state["training"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint in {self.checkpoint_dir} does not fit this "
                                  f"configuration ({exc}); pass --run-dir {self._suggest_run_dir()} to "
                                  "start a new run, or the settings of this one to resume it") from exc
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.resumed_from = self.training.epoch
        # the statistics files say what the checkpoint holds: rows of rounds done after it go
        dropped = drop_rows_after(self.run_dir, self.training.total_updates)
        if dropped:
            log.info("resuming at update %d: dropped %d statistics rows logged after that checkpoint "
                     "(their rounds are trained again)", self.training.total_updates, dropped)

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
        """Run the remaining epochs; checkpoint after each; save and re-raise on Ctrl+C. When every
        epoch is done, ``interface.announce_end()`` (if it has one) tells the workers the run is over."""
        check_interface(interface)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_json = json.dumps(self.config.to_dict(), indent=2)
        (self.run_dir / "config.json").write_text(config_json)
        self.table = ConsoleTable() if self.print_tables else None
        training = self.training
        rows: list[pd.Series] = []
        with contextlib.ExitStack() as stack:
            # opened before the bar, so closed after it: W&B's closing summary is not drawn into it
            loggers = self._open_loggers(stack, json.loads(config_json))
            bar = self._open_bar(stack) if self.progress else None
            interface.broadcast_model(training.agent.get_actor())  # workers start from the current policy
            try:
                while not self.done:
                    rows.extend(training.run_epoch(interface, on_round=lambda row: self._log(row, loggers, bar)))
                    self._after_epoch(self.save())
            except KeyboardInterrupt:
                path = self.save(partial=True)
                log.warning("interrupted: saved %s; run the same command to resume", path)
                raise
            finally:
                training.close()
        announce_end = getattr(interface, "announce_end", None)
        if callable(announce_end):
            announce_end()
        return rows

    def _open_loggers(self, stack: contextlib.ExitStack, config_data: dict) -> list:
        """The statistics loggers: the run directory's files, and W&B's with ``wandb_project``
        (``config_data``, config.json's contents, as its config); each is closed when ``stack``
        closes, also if a later one fails to open."""
        loggers: list = []

        def opened(logger):
            loggers.append(logger)
            stack.callback(logger.close)

        opened(CsvLogger(self.run_dir / "stats.csv", self.integer_keys))
        opened(JsonlLogger(self.run_dir / "stats.jsonl", self.integer_keys))
        purge = self.training.total_samples + 1 if self.resumed_from is not None else None
        opened(TensorBoardLogger(self.run_dir / "tensorboard", purge_step=purge))
        config = self.config
        if config.wandb_project is not None:
            opened(WandbLogger(self.run_dir, config.wandb_project, config_data, name=config.wandb_run_name,
                               mode=config.wandb_mode, integer_keys=self.integer_keys))
        return loggers

    def _after_epoch(self, checkpoint: Path) -> None:
        """What follows each epoch's checkpoint: a log line and ``learning_curve.png`` (drawn from
        the statistics files when matplotlib is installed; never fails the run)."""
        log.info("epoch %d done, checkpoint %s", self.training.epoch, checkpoint)
        from .plots import write_learning_curve
        write_learning_curve(self.run_dir)

    def _open_bar(self, stack: contextlib.ExitStack):
        """The progress bar (closed when ``stack`` closes); log lines are written above it meanwhile."""
        from tqdm import tqdm

        training = self.training
        remaining = max(0, training.epochs - training.epoch) * training.rounds * training.steps
        bar = tqdm(total=training.total_updates + remaining, initial=training.total_updates, unit="upd",
                   dynamic_ncols=True, file=sys.stderr, desc="training")
        stack.callback(bar.close)
        stack.enter_context(logging_around_bar())  # left before the bar closes (last in, first out)
        return bar

    def _log(self, row: pd.Series, loggers, bar) -> None:
        if self.row_extras is not None:
            for key, value in self.row_extras().items():
                row[key] = value  # in place: the rows run() returns carry the keys too
                if isinstance(value, int) and not isinstance(value, bool):
                    self.integer_keys.add(key)
        for logger in loggers:
            logger.log(row)
        if self.print_tables:
            table = getattr(self, "table", None) or ConsoleTable()
            self.table = table
            self._write(bar, "\n".join(table.lines(row)))
        if bar is not None:  # the numbers of the row just printed, shown at once
            ret, which = row.get("return_test"), "test"
            if ret is None or (isinstance(ret, float) and math.isnan(ret)):
                ret, which = row.get("return_train"), "train"
            shown = format_return(ret)
            bar.set_postfix_str(f"epoch {format_integer(row['epoch'])} round {format_integer(row['round'])} | "
                                f"{format_integer(row['total_samples'])} env steps | return "
                                f"{shown if shown == '-' else f'{which} {shown}'}", refresh=False)
            bar.total = max(bar.total, int(row["total_updates"]))
            bar.n = int(row["total_updates"])
            bar.refresh()

    @staticmethod
    def _write(bar, text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

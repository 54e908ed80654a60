"""Where statistics rows go: a CSV file, a JSONL file, TensorBoard, Weights & Biases (optional),
and the terminal.

Every file logger has ``log(row)`` (a pandas ``Series`` or a dict, one per round) and ``close()``.
The files are appended to, so a resumed run continues them (and the W&B run, whose id the run
directory keeps). Counters (:data:`INTEGER_KEYS` and whatever the logger is told) are written as
integers (``200``, not ``200.0``). wandb is imported only by :class:`WandbLogger`.

The terminal gets :class:`ConsoleTable`: one fixed-width line per round, under a header line
repeated every ``header_every`` rows. While a progress bar is drawn, :func:`logging_around_bar`
makes the console logging handlers write above it (``tqdm.write``), so no line is glued to the bar.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

from .round_stats import INTEGER_KEYS


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def plain_record(row: Mapping | pd.Series, integer_keys: Iterable[str] = INTEGER_KEYS) -> dict[str, Any]:
    """The row as plain Python values: NaN as None, the counters of ``integer_keys`` as ints (a
    pandas row of mixed values holds them as floats)."""
    integer_keys = integer_keys if isinstance(integer_keys, (set, frozenset)) else set(integer_keys)
    record = {}
    for key, value in row.items():
        value = _plain(value)
        if key in integer_keys and isinstance(value, float) and value.is_integer():
            value = int(value)
        record[key] = value
    return record


class CsvLogger:
    """One row per round; the header is fixed by the first row ever written to the file."""

    def __init__(self, path: str | Path, integer_keys: Iterable[str] = INTEGER_KEYS):
        self.path = Path(path)
        self.integer_keys = integer_keys
        self.columns: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), None)

    def log(self, row: Mapping | pd.Series) -> None:
        record = plain_record(row, self.integer_keys)
        new_file = self.columns is None
        if new_file:
            self.columns = list(record)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(self.columns)
            writer.writerow(["" if record.get(c) is None else record[c] for c in self.columns])

    def close(self) -> None:
        pass


class JsonlLogger:
    """One JSON object per line and round (NaN written as null)."""

    def __init__(self, path: str | Path, integer_keys: Iterable[str] = INTEGER_KEYS):
        self.path = Path(path)
        self.integer_keys = integer_keys

    def log(self, row: Mapping | pd.Series) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(plain_record(row, self.integer_keys)) + "\n")

    def close(self) -> None:
        pass


def drop_rows_after(run_dir: str | Path, total_updates: int) -> int:
    """Make ``stats.jsonl`` and ``stats.csv`` in ``run_dir`` agree with a checkpoint taken at
    ``total_updates``: the rows logged after it (by a run that was killed before its next
    checkpoint, and whose rounds the resumed run does again) are removed, as is a last line cut off
    mid-write. Each file is rewritten atomically, and only when something goes. Returns the number of
    rows removed from the JSONL file."""
    run_dir = Path(run_dir)
    removed = 0
    path = run_dir / "stats.jsonl"
    if path.exists():
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                keep = int(record.get("total_updates", 0)) <= total_updates
            except (ValueError, TypeError, AttributeError):
                keep = False
            if keep:
                kept.append(line)
            dropped += not keep
        if dropped:
            _replace_text(path, "".join(line + "\n" for line in kept))
        removed = dropped
    path = run_dir / "stats.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            header, body = rows[0], rows[1:]
            column = header.index("total_updates") if "total_updates" in header else None

            def keep(row):
                if column is None:
                    return True
                try:
                    return len(row) == len(header) and float(row[column]) <= total_updates
                except (ValueError, IndexError):
                    return False

            kept_rows = [row for row in body if keep(row)]
            if len(kept_rows) != len(body):
                import io
                out = io.StringIO()
                csv.writer(out).writerows([header, *kept_rows])
                _replace_text(path, out.getvalue())
    return removed


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TensorBoardLogger:
    """Scalars under ``relayrl/<key>``, indexed by ``total_samples`` (environment steps).
    ``purge_step``: events from that step on, left by a run killed before its next checkpoint, are
    discarded by TensorBoard (a resumed run passes its checkpoint's ``total_samples + 1``)."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def log(self, row: Mapping | pd.Series) -> None:
        step = int(row.get("total_samples", 0))
        for key, value in row.items():
            value = _plain(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                self.writer.add_scalar(f"relayrl/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MissingWandb(ValueError):
    """W&B logging was asked for (``wandb_project``, ``--wandb``) but wandb is not installed."""


class WandbError(ValueError):
    """W&B could not start the run (not logged in, a refused project...): the message says why."""


def import_wandb():
    """The ``wandb`` module, or :class:`MissingWandb` naming the command that installs it."""
    try:
        import wandb
    except ImportError as exc:
        from .envs import pip_command
        pip = pip_command()
        raise MissingWandb(f"--wandb (wandb_project) needs the wandb package, which is not installed: run "
                           f"{pip} install wandb (or {pip} install -e \".[wandb]\", the wandb extra)") from exc
    return wandb


def _wandb_command() -> str:
    """How to run W&B's command line for this Python (``.venv/bin/wandb`` in this project's venv)."""
    from .envs import pip_command
    pip = pip_command()  # .venv/bin/pip, or <python> -m pip
    return pip[:-len("pip")] + "wandb" if pip.endswith("pip") else "wandb"


def new_wandb_run_id(length: int = 8) -> str:
    """A W&B run id: lowercase letters and digits (W&B refuses ``/ \\ # ? % :`` in ids)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(length))


class WandbLogger:
    """Every row to a Weights & Biases run: its numbers at step ``total_samples`` (as TensorBoard's;
    NaN, i.e. no episode finished in the round, is left out), the run's configuration as the W&B
    config. The run's id is kept in ``run_dir/wandb_run_id`` (written before the run starts), so a
    resumed run continues the same W&B run. W&B's local files go to ``run_dir/wandb/`` unless the
    ``WANDB_DIR`` environment variable says otherwise; ``mode`` None leaves the mode to W&B
    (``WANDB_MODE``, else online)."""

    ID_FILE = "wandb_run_id"

    def __init__(self, run_dir: str | Path, project: str, config: Mapping | None = None, *,
                 name: str | None = None, mode: str | None = None,
                 integer_keys: Iterable[str] = INTEGER_KEYS):
        wandb = import_wandb()
        run_dir = Path(run_dir)
        self.integer_keys = integer_keys
        self.run_id = self._run_id(run_dir / self.ID_FILE)
        options: dict[str, Any] = {"project": project, "id": self.run_id, "resume": "allow",
                                   "name": name or run_dir.absolute().name, "config": dict(config or {})}
        if mode is not None:
            options["mode"] = mode
        if not os.environ.get("WANDB_DIR"):
            options["dir"] = str(run_dir)
        try:
            self.run = wandb.init(**options)
        except wandb.errors.Error as exc:
            why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            raise WandbError(f"W&B could not start the run ({why}); log in with {_wandb_command()} login (or "
                             "set WANDB_API_KEY), or log to local files with --wandb-mode offline") from exc

    @staticmethod
    def _run_id(path: Path) -> str:
        """The id kept in ``path``, or a new one written there."""
        try:
            kept = path.read_text().strip()
        except FileNotFoundError:
            kept = ""
        if kept:
            return kept
        run_id = new_wandb_run_id()
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(run_id + "\n")
        os.replace(temporary, path)
        return run_id

    def log(self, row: Mapping | pd.Series) -> None:
        record = plain_record(row, self.integer_keys)
        data = {key: value for key, value in record.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}
        self.run.log(data, step=int(record.get("total_samples") or 0))

    def close(self) -> None:
        """Finish the W&B run; as failed (exit code 1) when called while an exception (Ctrl+C
        included) is on its way out of the run."""
        self.run.finish(exit_code=0 if sys.exc_info()[0] is None else 1)


# --- the terminal --------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    value = _plain(value)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def format_integer(value: Any) -> str:
    """``12345`` (never ``1.234e+04``); ``-`` for a missing value."""
    number = _number(value)
    return "-" if number is None or not math.isfinite(number) else str(int(round(number)))


def format_return(value: Any) -> str:
    """A return with one decimal (``-1234.5``); ``-`` when no episode finished."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        return "-"
    return f"{number:.1f}" if abs(number) < 1e7 else f"{number:.3g}"


def format_metric(value: Any) -> str:
    """Four significant digits without an exponent from 0.001 to 99999 (``0.01234``, ``12.35``,
    ``1235``), with one outside that range (``1.23e+06``)."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        return "-" if number is None or math.isnan(number) else str(number)
    size = abs(number)
    if size == 0:
        return "0"
    if size >= 1e5 or size < 1e-3:
        return f"{number:.2e}"
    return f"{number:.{max(0, 3 - math.floor(math.log10(size)))}f}"


def _idle_percent(row: Mapping) -> str:
    idle, total = _number(row.get("idle_time")), _number(row.get("round_time"))
    if idle is None or not total or not math.isfinite(idle) or not math.isfinite(total):
        return "-"
    return f"{100.0 * idle / total:.0f}%"


def _episodes(row: Mapping) -> str:
    return f"{format_integer(row.get('episodes_train'))}/{format_integer(row.get('episodes_test'))}"


def _fixed(key: str, digits: int):
    def show(row: Mapping) -> str:
        number = _number(row.get(key))
        return "-" if number is None or not math.isfinite(number) else f"{number:.{digits}f}"
    return show


#: The console table's columns: (title, width, the text of a row's cell). Counters are integers,
#: upd/s has one decimal, idle% is idle_time / round_time, returns have one decimal, episodes are
#: "training/test" finished in the round, upd/smp is the update-to-data ratio. The agent's main
#: loss (:func:`main_loss_key`) is added as the last column.
CONSOLE_COLUMNS: tuple = (
    ("epoch", 5, lambda row: format_integer(row.get("epoch"))),
    ("round", 5, lambda row: format_integer(row.get("round"))),
    ("updates", 8, lambda row: format_integer(row.get("total_updates"))),
    ("env steps", 9, lambda row: format_integer(row.get("total_samples"))),
    ("memory", 8, lambda row: format_integer(row.get("memory_len"))),
    ("upd/s", 6, _fixed("updates_per_second", 1)),
    ("idle%", 5, _idle_percent),
    ("ret train", 9, lambda row: format_return(row.get("return_train"))),
    ("ret test", 9, lambda row: format_return(row.get("return_test"))),
    ("eps tr/te", 9, _episodes),
    ("upd/smp", 7, _fixed("update_to_data_ratio", 2)),
)


def main_loss_key(keys: Iterable[str]) -> str | None:
    """The agent's main loss among a row's keys: ``loss_critic`` if there is one, else the first
    key that starts with ``loss``, else None."""
    keys = list(keys)
    if "loss_critic" in keys:
        return "loss_critic"
    return next((k for k in keys if k.startswith("loss")), None)


class ConsoleTable:
    """The per-round lines of the terminal: :meth:`lines` gives a header line before the first row
    and then every ``header_every`` rows, and one fixed-width line per row (about 115 columns)."""

    def __init__(self, header_every: int = 20):
        if header_every < 1:
            raise ValueError(f"header_every must be >= 1, got {header_every}")
        self.header_every = header_every
        self.rows_shown = 0
        self.columns: list | None = None

    def _columns(self, row: Mapping) -> list:
        if self.columns is None:
            columns = list(CONSOLE_COLUMNS)
            loss = main_loss_key(row.keys())
            if loss is not None:
                columns.append((loss, max(11, len(loss)), lambda r, key=loss: format_metric(r.get(key))))
            self.columns = columns
        return self.columns

    def header(self, row: Mapping) -> str:
        return "  ".join(title.rjust(width) for title, width, _ in self._columns(row))

    def line(self, row: Mapping) -> str:
        return "  ".join(show(row).rjust(width) for _, width, show in self._columns(row))

    def lines(self, row: Mapping) -> list[str]:
        """The lines to print for ``row`` (the header first when one is due)."""
        out = [self.header(row)] if self.rows_shown % self.header_every == 0 else []
        out.append(self.line(row))
        self.rows_shown += 1
        return out


class _AroundTheBar(logging.Handler):
    """Formats and filters as the console handler it stands in for, and writes with ``tqdm.write``
    (which clears the bars, writes the line and draws them again)."""

    def __init__(self, inner: logging.StreamHandler):
        super().__init__(inner.level)
        self.inner = inner
        self.filters = list(inner.filters)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.inner.format(record), file=self.inner.stream)
            self.inner.flush()
        except RecursionError:  # pragma: no cover
            raise
        except Exception:  # pragma: no cover - as logging does: never let logging break the run
            self.handleError(record)


def _console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and stream is not None and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__))


@contextlib.contextmanager
def logging_around_bar(loggers: Iterable[logging.Logger] | None = None) -> Iterator[None]:
    """While the block runs, the console handlers of ``loggers`` (default: the root logger and
    ``relayrl``'s) write above the progress bars instead of into them; other handlers (files)
    are left alone. The handlers are put back afterwards."""
    loggers = list(loggers) if loggers is not None else [logging.getLogger(), logging.getLogger("relayrl")]
    saved = [(logger, logger.handlers) for logger in loggers]
    try:
        for logger, handlers in saved:
            logger.handlers = [_AroundTheBar(h) if _console(h) else h for h in handlers]
        yield
    finally:
        for logger, handlers in saved:
            logger.handlers = handlers

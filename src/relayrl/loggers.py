"""Where statistics rows go: a CSV file, a JSONL file, TensorBoard, and the terminal.

Every logger has ``log(row)`` (a pandas ``Series``, one per round) and ``close()``. The files are
appended to, so a resumed run continues them.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd

#: Columns shown in the per-round table printed on the terminal.
TABLE_KEYS = ("epoch", "round", "total_samples", "total_updates", "memory_len", "return_train",
              "return_test", "updates_per_second", "idle_time", "round_time", "update_to_data_ratio",
              "loss_critic", "loss_actor", "entropy_coef")


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class CsvLogger:
    """One row per round; the header is fixed by the first row ever written to the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.columns: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), None)

    def log(self, row: pd.Series) -> None:
        new_file = self.columns is None
        if new_file:
            self.columns = list(row.index)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(self.columns)
            writer.writerow(["" if _plain(row.get(c)) is None else _plain(row.get(c)) for c in self.columns])

    def close(self) -> None:
        pass


class JsonlLogger:
    """One JSON object per line and round (NaN written as null)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def log(self, row: pd.Series) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars under ``relayrl/<key>``, indexed by ``total_samples`` (environment steps)."""

    def __init__(self, logdir: str | Path):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(str(logdir))

    def log(self, row: pd.Series) -> None:
        step = int(row.get("total_samples", 0))
        for key, value in row.items():
            value = _plain(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                self.writer.add_scalar(f"relayrl/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def format_table(row: pd.Series, keys=TABLE_KEYS, per_line: int = 7) -> str:
    """A compact fixed-width table of the row's main keys."""
    cells = []
    for key in keys:
        if key not in row.index:
            continue
        value = _plain(row[key])
        if value is None:
            text = "-"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        cells.append((key, text))
    lines = []
    for i in range(0, len(cells), per_line):
        chunk = cells[i:i + per_line]
        widths = [max(len(k), len(v)) for k, v in chunk]
        lines.append("  ".join(k.rjust(w) for (k, _), w in zip(chunk, widths)))
        lines.append("  ".join(v.rjust(w) for (_, v), w in zip(chunk, widths)))
    return "\n".join(lines)

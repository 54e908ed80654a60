"""Learning curves: the return of runs against environment steps and against wall-clock time.

``relayrl plot RUN_DIR [RUN_DIR...]`` draws one picture of two panels: the mean return of the
episodes finished in each round (test episodes, the deterministic policy, solid; training episodes,
dashed) against the environment steps received (``total_samples``), and against the wall-clock
time of the rounds (``round_time`` summed). Runs whose ``config.json`` files are identical except
for ``seed`` and ``run_dir`` (and the W&B settings) are seeds of one configuration: they are drawn
as one curve, their mean, with a band from their minimum to their maximum, on a common grid (the x
values of every seed where all of them have data, each seed interpolated linearly). The trainer calls
:func:`write_learning_curve` after every epoch, which keeps ``RUN_DIR/learning_curve.png`` current.

The rows are read from ``stats.jsonl`` (``stats.csv`` when there is no JSONL file): each of its
lines is a complete row that names its own keys, with NaN written as null, so a line cut short by
a killed process spoils only itself, while the CSV's columns are fixed by the first row the file
ever got. The trainer writes the same rows to both. A run resumed from an older checkpoint than
its last row (the process was killed mid-epoch) continues the files from the checkpoint's
counters: the rows it logged after that checkpoint are not part of the run any more and are left
out (a row whose round started at fewer environment steps than earlier rows reached supersedes
them).

matplotlib is optional (``.venv/bin/pip install matplotlib``, the ``plot`` extra, which
``scripts/setup.sh`` installs); it is imported only when a picture is drawn, with the Agg canvas
and without pyplot, so that drawing never changes the backend of the process that calls it. The
rest of this module needs numpy only: :func:`curves` returns the series that would be drawn.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger("relayrl")

__all__ = ["PlotError", "MissingMatplotlib", "Series", "Curve", "read_stats", "stats_file", "group_runs",
           "curves", "render", "plot_runs", "write_learning_curve", "default_output"]

STATS_FILES = ("stats.jsonl", "stats.csv")
"""Where the rows are read from, in order of preference."""
RETURN_KEYS = ("return_test", "return_train")
"""The row keys drawn: the test (deterministic) episodes' mean return, then the training episodes'."""
AXES = ("env_steps", "wall_clock")
"""The panels: against ``total_samples``, and against the cumulative ``round_time`` in seconds."""
SEED_KEYS = ("seed", "run_dir", "wandb_project", "wandb_run_name", "wandb_mode")
"""The ``config.json`` keys in which seeds of one configuration may differ (the W&B settings say
only where the rows are logged too)."""
FIGSIZE = (12.0, 4.8)
DPI = 100
"""The picture is ``FIGSIZE * DPI`` pixels (1200 x 480)."""
SINGLE_NAME = "learning_curve.png"
MULTI_NAME = "learning_curves.png"
INSTALL = ".venv/bin/pip install matplotlib"

_ROW_KEYS = ("total_samples", "samples_in_round", "round_time") + RETURN_KEYS
_STYLE = {"return_test": dict(linestyle="-", linewidth=1.8, band=0.25, name="test"),
          "return_train": dict(linestyle="--", linewidth=1.2, band=0.12, name="train")}
_XLABEL = {"env_steps": "environment steps (total_samples)",
           "wall_clock": "wall-clock seconds (round_time summed)"}


class PlotError(ValueError):
    """Bad input to a plot: the message names the problem and the fix, in one line."""


class MissingMatplotlib(PlotError):
    """matplotlib is not installed."""


@dataclass
class Series:
    """One line: ``y`` against ``x``; for seeds of one configuration ``y`` is their mean on a common
    grid and ``low``/``high`` their minimum and maximum (None for a single run)."""

    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Curve:
    """What is drawn for one run, or for the seeds of one configuration."""

    label: str
    run_dirs: list[Path]
    seeds: list = field(default_factory=list)
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    """``(row key, axis) -> Series``: keys of :data:`RETURN_KEYS`, axes of :data:`AXES`."""

    @property
    def points(self) -> int:
        return sum(len(s) for s in self.series.values())


# --- reading a run ------------------------------------------------------------------------------
def stats_file(run_dir: str | os.PathLike) -> Path:
    """The statistics file of ``run_dir``, or a :class:`PlotError` saying what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise PlotError(f"no run directory at {run_dir}: give the --run-dir of a run (e.g. runs/Pendulum-v1)")
    if not run_dir.is_dir():
        hint = f" ({run_dir.parent})" if run_dir.name in STATS_FILES else ""
        raise PlotError(f"{run_dir} is a file, not a run directory: give the directory that holds "
                        f"stats.jsonl or stats.csv{hint}")
    for name in STATS_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise PlotError(f"{run_dir} has no stats.jsonl or stats.csv: give the run directory of a run that "
                    "finished at least one round (the trainer writes them after every round)")


def _number(value) -> float:
    if value is None or value == "" or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_jsonl(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by a killed process
                log.debug("%s:%d is not a JSON row; skipped", path, number)
                continue
            if isinstance(row, dict):
                yield row


def _read_csv(path: Path) -> Iterable[dict]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        yield from csv.DictReader(f)


def _surviving(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """The rows of the run's history: a row whose round started at fewer environment steps
    (``total_samples - samples_in_round``) than earlier rows reached, which only a resume from an
    older checkpoint makes, supersedes those rows."""
    kept: list[dict[str, float]] = []
    for row in rows:
        start = row["total_samples"] - max(0.0, row["samples_in_round"])
        while kept and kept[-1]["total_samples"] > start:
            kept.pop()
        kept.append(row)
    return kept


def read_stats(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of ``run_dir`` (its :func:`stats_file`), each with the keys drawn as floats (NaN when
    missing), in the run's order; rows without ``total_samples`` and superseded rows left out."""
    path = stats_file(run_dir)
    reader = _read_jsonl if path.suffix == ".jsonl" else _read_csv
    try:
        raw = list(reader(path))
    except OSError as exc:
        raise PlotError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for item in raw:
        row = {key: _number(item.get(key)) for key in _ROW_KEYS}
        if math.isfinite(row["total_samples"]):
            if not math.isfinite(row["samples_in_round"]):
                row["samples_in_round"] = 0.0
            rows.append(row)
    return _surviving(rows)


def run_series(rows: list[dict[str, float]]) -> dict[tuple[str, str], Series]:
    """The lines of one run: for each return key and axis, the rounds that finished such episodes."""
    steps = np.array([row["total_samples"] for row in rows], dtype=float)
    seconds = np.cumsum([row["round_time"] if math.isfinite(row["round_time"]) else 0.0 for row in rows])
    seconds = np.asarray(seconds, dtype=float)
    series = {}
    for key in RETURN_KEYS:
        y = np.array([row[key] for row in rows], dtype=float)
        ok = np.isfinite(y)
        series[(key, "env_steps")] = Series(steps[ok], y[ok])
        series[(key, "wall_clock")] = Series(seconds[ok], y[ok])
    return series


def band(parts: list[Series]) -> Series:
    """Mean, minimum and maximum of several runs' lines on a common grid: every x of any of them
    inside the range all of them cover, each line interpolated linearly there (an empty series when
    they share no range)."""
    parts = [p for p in parts if len(p)]
    empty = np.zeros(0)
    if not parts:
        return Series(empty, empty, empty, empty)
    lo, hi = max(p.x[0] for p in parts), min(p.x[-1] for p in parts)
    if lo > hi:
        return Series(empty, empty, empty, empty)
    grid = np.unique(np.concatenate([p.x[(p.x >= lo) & (p.x <= hi)] for p in parts]))
    values = np.stack([np.interp(grid, p.x, p.y) for p in parts])
    return Series(grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0))


# --- grouping seeds -------------------------------------------------------------------------------
def _config(run_dir: Path) -> dict | None:
    try:
        data = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def group_runs(run_dirs: Iterable[str | os.PathLike]) -> list[list[Path]]:
    """The runs in groups of seeds of one configuration (identical ``config.json`` except for
    :data:`SEED_KEYS`), in the order of their first run; a run without a readable ``config.json``
    is a group of its own. A directory given twice counts once."""
    groups: dict[str, list[Path]] = {}
    seen = set()
    for index, run_dir in enumerate(map(Path, run_dirs)):
        identity = os.path.realpath(run_dir)
        if identity in seen:
            continue
        seen.add(identity)
        config = _config(run_dir)
        if config is None:
            key = f"alone:{index}"
        else:
            key = json.dumps({k: v for k, v in config.items() if k not in SEED_KEYS}, sort_keys=True)
        groups.setdefault(key, []).append(run_dir)
    return list(groups.values())


def _label(run_dirs: list[Path], seeds: list) -> str:
    names = ", ".join(str(d) for d in run_dirs)
    if len(run_dirs) == 1:
        return names
    shown = ", ".join(str(s) for s in seeds) if all(s is not None for s in seeds) else "?"
    return f"{names} (mean of {len(run_dirs)} seeds: {shown}; band: min-max)"


def curves(run_dirs: Iterable[str | os.PathLike]) -> list[Curve]:
    """What :func:`render` draws for ``run_dirs``: one :class:`Curve` per run or group of seeds.
    Raises :class:`PlotError` for a path that is not a run directory with statistics."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise PlotError("no run directory given: name at least one (e.g. relayrl plot runs/Pendulum-v1)")
    rows = {d: read_stats(d) for d in run_dirs}  # every path checked before anything is drawn
    result = []
    for group in group_runs(run_dirs):
        seeds = [(_config(d) or {}).get("seed") for d in group]
        per_run = [run_series(rows[d]) for d in group]
        if len(group) == 1:
            series = per_run[0]
        else:
            series = {key: band([lines[key] for lines in per_run]) for key in per_run[0]}
        result.append(Curve(_label(group, seeds), group, seeds, series))
    return result


# --- drawing ----------------------------------------------------------------------------------------
def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlib(f"drawing learning curves needs matplotlib, which is not installed: run "
                                f"{INSTALL} (or .venv/bin/pip install -e '.[plot]'; scripts/setup.sh "
                                "installs it)") from None
    return Figure, FigureCanvasAgg


def render(drawn: list[Curve], output: str | os.PathLike, title: str | None = None) -> Path:
    """Draw ``drawn`` (from :func:`curves`) into ``output`` (PNG unless its suffix names another
    format matplotlib writes), atomically; :data:`FIGSIZE` x :data:`DPI` pixels."""
    Figure, FigureCanvasAgg = _matplotlib()
    output = Path(output)
    if not output.parent.is_dir():
        raise PlotError(f"cannot write {output}: the directory {output.parent} does not exist; create it "
                        "or choose another -o")
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    handles, labels = [], []
    for index, curve in enumerate(drawn):
        color = f"C{index % 10}"
        label = textwrap.shorten(curve.label, 110, placeholder=" ...")
        for key in RETURN_KEYS:
            style = _STYLE[key]
            for ax, axis in zip(axes, AXES):
                s = curve.series.get((key, axis))
                if s is None or not len(s):
                    continue
                (line,) = ax.plot(s.x, s.y, color=color, linestyle=style["linestyle"],
                                  linewidth=style["linewidth"], marker="o" if len(s) == 1 else None)
                if s.low is not None:
                    ax.fill_between(s.x, s.low, s.high, color=color, alpha=style["band"], linewidth=0)
                if axis == "env_steps":
                    handles.append(line)
                    labels.append(f"{label}: {style['name']}")
    for ax, axis in zip(axes, AXES):
        ax.set_xlabel(_XLABEL[axis])
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("mean episode return per round")
    fig.suptitle(title or "return of the test episodes (deterministic policy, solid) and of the training "
                 "episodes (dashed)", fontsize=11)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=2 if len(handles) > 2 else 1,
                   fontsize=8, frameon=False)
    fmt = output.suffix[1:].lower() or "png"
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, output)
    except OSError as exc:
        raise PlotError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return output


def default_output(run_dirs: list[str | os.PathLike]) -> Path:
    """``RUN_DIR/learning_curve.png`` for one run, ``./learning_curves.png`` for several."""
    return Path(run_dirs[0]) / SINGLE_NAME if len(run_dirs) == 1 else Path(MULTI_NAME)


def plot_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> tuple[Path, list[Curve]]:
    """Draw the learning curves of ``run_dirs`` into ``output`` (default: :func:`default_output`);
    returns the file and what was drawn. :class:`PlotError` for bad input, or when no run has a
    finished episode yet."""
    run_dirs = list(run_dirs)
    drawn = curves(run_dirs)  # checks the paths first, also when matplotlib is missing
    if not any(c.points for c in drawn):
        raise PlotError(f"no episode has finished yet in {', '.join(map(str, run_dirs))}: nothing to "
                        "draw; plot again after a few rounds")
    _matplotlib()
    return render(drawn, default_output(run_dirs) if output is None else output), drawn


_logged: set[str] = set()


def write_learning_curve(run_dir: str | os.PathLike) -> Path | None:
    """Redraw ``run_dir/learning_curve.png``; the trainer calls this after every epoch. Returns the
    file, or None when nothing was drawn: matplotlib missing (said once, at info level), no finished
    episode yet, or any failure (logged once per message). Never raises (except KeyboardInterrupt)."""
    try:
        drawn = curves([run_dir])
        if not any(c.points for c in drawn):
            return None
        return render(drawn, Path(run_dir) / SINGLE_NAME)
    except MissingMatplotlib as exc:
        message = f"no learning_curve.png: {exc}"
        level = logging.INFO
    except Exception as exc:  # a picture must never fail a run
        message = f"could not draw {Path(run_dir) / SINGLE_NAME}: {type(exc).__name__}: {exc}"
        level = logging.WARNING
    if message not in _logged:
        _logged.add(message)
        log.log(level, "%s", message)
    else:
        log.debug("%s", message)
    return None

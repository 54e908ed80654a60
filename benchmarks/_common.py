"""Shared helpers of the benchmark suite: machine header, interleaved timing, tables.

Every comparison runs its variants in one process, *interleaved*: repeat ``r`` times
``for variant in variants (rotated): measure(variant)``, so that a slow phase of the machine (other
processes taking a core) hits every variant alike. Tables show the median, min and max over the
repeats and the ratio of each median to the reference row.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if os.path.join(ROOT, "src") not in sys.path and os.path.isdir(os.path.join(ROOT, "src")):
    # running from a checkout without `pip install -e .` still works
    sys.path.append(os.path.join(ROOT, "src"))


# ------------------------------------------------------------------------------------------------
# optional Stable-Baselines3
# ------------------------------------------------------------------------------------------------
def sb3_version() -> str | None:
    """The installed Stable-Baselines3 version, or None (benchmark-only extra: ``pip install
    -e ".[bench]"``). ``RELAYRL_BENCH_NO_SB3=1`` pretends it is missing (to test the skips)."""
    if os.environ.get("RELAYRL_BENCH_NO_SB3"):
        return None
    try:
        import stable_baselines3
    except Exception:  # noqa: BLE001  (ImportError, or a broken install)
        return None
    return stable_baselines3.__version__


def sb3_skip_note(what: str) -> str:
    return (f"  [skipped] {what}: Stable-Baselines3 is not installed "
            "(benchmark-only extra: .venv/bin/pip install -e '.[bench]')")


# ------------------------------------------------------------------------------------------------
# machine header
# ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    from relayrl.system import available_cores as cores  # the rule relayrl's defaults use
    return cores()


def machine_header(extra: str = "") -> str:
    import numpy
    import torch

    sb3 = sb3_version() or "not installed"
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "n/a"
    env_threads = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                            if k in os.environ) or "OMP_NUM_THREADS/MKL_NUM_THREADS/OMP_WAIT_POLICY unset"
    lines = [
        f"machine: {available_cores()} cores ({os.cpu_count()} logical), {cpu_model()}, "
        f"{platform.system()} {platform.release()}",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {numpy.__version__}, stable-baselines3 {sb3}",
        f"threads: torch.get_num_threads()={torch.get_num_threads()}, "
        f"interop={torch.get_num_interop_threads()}, {env_threads}; load average {load}",
    ]
    lines[-1] += f"; malloc: {malloc_state()}"
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def malloc_state() -> str:
    sac = sys.modules.get("relayrl.algorithms.networks")
    if sac is not None and getattr(sac, "_allocator_tuned", False):
        return "tuned (relayrl's tune_cpu_allocator, as in a relayrl trainer)"
    return "glibc defaults"


# ------------------------------------------------------------------------------------------------
# measurements and tables
# ------------------------------------------------------------------------------------------------
@dataclass
class Series:
    """The repeated measurements of one variant (one number per repeat)."""

    name: str
    values: list[float] = field(default_factory=list)
    note: str = ""
    cpu: list[float] = field(default_factory=list)
    """Optional: the CPU time of the same measurements (process CPU seconds, same unit)."""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def min(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def max(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def scaled(self, factor: float, name: str | None = None, note: str = "") -> "Series":
        return Series(name or self.name, [v * factor for v in self.values], note or self.note,
                      [v * factor for v in self.cpu])


def interleaved(variants: dict[str, Callable[[], float]], repeats: int, warmup: bool = True,
                log: Callable[[str], None] | None = None) -> dict[str, Series]:
    """Run each ``variants[name]()`` ``repeats`` times, interleaved; the order rotates from one
    repeat to the next so no variant always runs first. A variant returns one measurement, or a
    pair ``(wall, cpu)`` (see :func:`timed`)."""
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    out = {name: Series(name) for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            value = variants[name]()
            if isinstance(value, tuple):
                out[name].values.append(value[0])
                out[name].cpu.append(value[1])
            else:
                out[name].values.append(value)
        if log is not None:
            log(f"    repeat {r + 1}/{repeats}: " + ", ".join(
                f"{n}={out[n].values[-1]:.4g}" for n in names))
    return out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call of ``fn``."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def time_calls(fn: Callable[[], object], n: int) -> float:
    """Seconds for ``n`` calls of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def calibrate(fn: Callable[[], object], target_seconds: float, max_n: int = 1_000_000) -> int:
    """A call count that takes about ``target_seconds`` (at least 1, bounded by ``max_n``)."""
    n = 1
    while n < max_n:
        t = time_calls(fn, n)
        if t >= target_seconds / 4:
            return max(1, min(max_n, int(n * target_seconds / max(t, 1e-9))))
        n *= 4
    return max_n


def fmt(value: float, digits: int = 4) -> str:
    if value != value:  # NaN
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def table(title: str, series: Sequence[Series], unit: str, reference: str | None,
          ratio_label: str = "ratio", header_extra: str = "", higher_is_better: bool = True) -> str:
    """A markdown table: variant | median | min | max | ratio to the reference (median / median)."""
    ref = next((s for s in series if s.name == reference), None)
    rows = [f"### {title}", "", machine_header(header_extra), ""]
    direction = "higher is better" if higher_is_better else "lower is better"
    with_cpu = any(s.cpu for s in series)
    head = f"| variant | median {unit} | min | max | n | {ratio_label} |"
    if with_cpu:
        head += f" median CPU {unit} | CPU {ratio_label} |"
    rows.append(head)
    rows.append("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_cpu else ""))

    def ratio_text(value: float, ref_value: float, is_ref: bool) -> str:
        if is_ref:
            return "1.00 (reference)"
        r = value / ref_value if ref_value == ref_value and ref_value else float("nan")
        return f"{r:.3f}x" if r == r else "n/a"

    for s in series:
        name = s.name + (f" ({s.note})" if s.note else "")
        line = (f"| {name} | {fmt(s.median)} | {fmt(s.min)} | {fmt(s.max)} | {len(s.values)} | "
                f"{ratio_text(s.median, ref.median if ref else float('nan'), s is ref)} |")
        if with_cpu:
            line += (f" {fmt(s.cpu_median)} | "
                     f"{ratio_text(s.cpu_median, ref.cpu_median if ref else float('nan'), s is ref)} |")
        rows.append(line)
    rows.append("")
    note = (f"({unit}: {direction}; {ratio_label} = variant median / {reference or 'reference'} "
            f"median; n = interleaved repeats")
    if with_cpu:
        note += ("; CPU columns: process CPU time of the same runs (all threads), less sensitive to "
                 "other processes taking the core")
    rows.append(note + ")")
    spread = max((s.max / s.min for s in series if s.values and s.min > 0), default=1.0)
    if spread > 2.0:
        rows.append(f"WARNING: unstable measurements (max/min up to {spread:.1f}x within a variant): "
                    "other processes were competing for the cores; the ratios of this table are "
                    "unreliable (the CPU columns and a quieter machine help)")
    return "\n".join(rows)


SMOKE = False  # set by run.py --smoke: tiny settings whose numbers mean nothing


def target_line(label: str, value: float, op: str, goal: float, detail: str = "") -> str:
    ok = value <= goal if op == "<=" else value >= goal
    if SMOKE:
        verdict = "n/a (smoke run: not a measurement)"
    elif value != value:
        verdict = "NOT MEASURED"
    else:
        verdict = "MET" if ok else "MISSED"
    return f"TARGET {label}: {value:.3f} (target {op} {goal:g}) -> {verdict}" + (
        f"  [{detail}]" if detail else "")


@dataclass
class Options:
    quick: bool = False
    smoke: bool = False
    """Tiny settings for the smoke test (implies quick): checks that everything runs, measures nothing."""
    repeats: int = 5
    threads: int = 1
    seeds: int = 3
    e2e_budget: float = 300.0
    e2e_epochs: int = 20
    sb3_threads: int = 0
    sb3_eval_every: int = 1000
    sb3_matched: bool = True
    """(d) also runs SB3 with the learning rate of relayrl's embedded default."""
    e2e_set: list = field(default_factory=list)
    """Extra relayrl config overrides for (d), as "dotted.key=value" strings."""
    e2e_env: list = field(default_factory=list)
    """Extra environment variables for (d)'s processes (both frameworks), as "NAME=value" strings."""
    learning_seeds: int = 5
    learning_steps: int = 5000
    verbose: bool = False
    results: dict = field(default_factory=dict)

    def log(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

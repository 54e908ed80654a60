"""Smoke test of the benchmark suite (benchmarks/run.py): tiny settings, no timing assertions.

Checks that the overhead, sampling and memory comparisons run end to end and print their tables
(the Stable-Baselines3 rows are skipped, with a note, when SB3 is not installed)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")


@pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")
def test_benchmarks_run_and_print_tables():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, RUN, "--smoke", "--in-process",
                          "--only", "overhead,sampling,memory"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    text = out.stdout
    assert out.returncode == 0, text[-3000:] + out.stderr[-3000:]
    for title in ("(a) wrapper overhead", "(a') the loop's own cost", "(b) batch sampling, vector",
                  "(b) batch sampling, image", "(e) memory"):
        assert title in text, f"missing table {title!r}:\n{text[-3000:]}"
    assert "| variant | median" in text and "machine:" in text and "versions:" in text
    assert "relayrl ReplayMemory" in text and "tmrl-style" in text
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        assert "[skipped]" in text
    else:
        assert "SB3 ReplayBuffer" in text
    assert "[failed]" not in text

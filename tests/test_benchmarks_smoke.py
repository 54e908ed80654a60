"""Smoke test of the benchmark suite (benchmarks/run.py): tiny settings, no timing assertions.

Checks that the overhead, sampling and memory comparisons run end to end and print their tables,
with Stable-Baselines3 when it is installed and, pretending it is not, that its rows are skipped
with a note."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")


def sb3_installed() -> bool:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def run_benchmarks(only: str, **env_extra) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    out = subprocess.run([sys.executable, RUN, "--smoke", "--in-process", "--only", only],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[failed]" not in out.stdout
    return out.stdout


@pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")
def test_benchmarks_run_and_print_tables():
    text = run_benchmarks("overhead,sampling,memory")
    for title in ("(a) wrapper overhead, serial", "(a) wrapper overhead, parallel", "(a') the loop's own cost", "(b) batch sampling, vector",
                  "(b) batch sampling, image", "(e) memory"):
        assert title in text, f"missing table {title!r}:\n{text[-3000:]}"
    assert "| variant | median" in text and "machine:" in text and "versions:" in text
    assert "relayrl ReplayMemory" in text and "tmrl-style" in text
    if sb3_installed():
        assert "| SB3 ReplayBuffer" in text
    else:
        assert "[skipped]" in text


@pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")
def test_sb3_rows_are_skipped_with_a_note_when_sb3_is_missing():
    text = run_benchmarks("sampling,memory", RELAYRL_BENCH_NO_SB3="1")
    assert "[skipped]" in text and "Stable-Baselines3 is not installed" in text
    assert "(b) batch sampling, vector" in text and "(e) memory" in text
    assert "| SB3 ReplayBuffer" not in text  # no table row (the skip note names it)


@pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")
def test_learning_curve_benchmark_runs_and_its_test_is_exact():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from bench_learning import permutation_p
    finally:
        sys.path.pop(0)
    assert permutation_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    # completely separated groups of 3: only the 2 extreme splits of C(6,3) = 20 are as extreme
    assert permutation_p([1.0, 2.0, 3.0], [10.0, 11.0, 12.0]) == pytest.approx(2 / 20)
    text = run_benchmarks("learning")
    assert "### learning curves" in text
    for variant in ("bare", "relayrl serial", "relayrl parallel"):
        assert f"| {variant} |" in text


@pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")
def test_end_to_end_tables_build_from_runs(monkeypatch):
    """(d)'s tables, medians and target lines, from made-up runs (the real ones take minutes)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_e2e
        from _common import Options
    finally:
        sys.path.pop(0)
    point = lambda steps, wall: {"env_steps": steps, "wall": wall, "process": wall + 3, "return": -150.0}  # noqa: E731

    def fake_relayrl(seed, opts, log):
        p = point(3061 + 1000 * seed, 20.0 + seed)
        return {"seed": seed, "rows": 10, "first_row": p, "five_episodes": p, "eval": p, "evals": [p],
                "last_env_steps": 4000, "last_updates": 3900, "train_wall": 30.0, "process_wall": 35.0,
                "threads": 1, "stderr_tail": ""}

    def fake_sb3(seed, opts, threads, learning_rate=0.0):
        p = point(4000 if learning_rate else 5000, 40.0 if learning_rate else 50.0)
        return {"seed": seed, "reached": p, "evals": [p], "threads": 2, "stderr_tail": ""}

    monkeypatch.setattr(bench_e2e, "run_relayrl", fake_relayrl)
    monkeypatch.setattr(bench_e2e, "run_sb3", fake_sb3)
    monkeypatch.setattr(bench_e2e, "sb3_version", lambda: "2.x")
    text = "\n".join(bench_e2e.run(Options(seeds=3)))
    assert "SB3 SAC, learning rate 0.001 (relayrl's), eval" in text
    # medians: relayrl 4061 steps / 21 s; SB3 5000 / 50 s; SB3 at relayrl's learning rate 4000 / 40 s
    assert "TARGET (d) relayrl env steps / SB3 (SB3-like eval, median): 0.812" in text
    assert "TARGET (d) relayrl wall-clock / SB3 (SB3-like eval, median): 0.420 (target <= 0.5) -> MET" in text
    assert "relayrl's steps 1.02x, wall-clock 0.53x of SB3's" in text


@pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")
def test_compile_benchmark_runs():
    text = run_benchmarks("compile")
    assert "torch.compile: SAC updates/s with compiled networks" in text
    assert "compiled / eager:" in text

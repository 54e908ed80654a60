"""What a user sees after training: ``relayrl plot`` (learning curves) and ``relayrl eval`` (the
latest policy's deterministic return)."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from relayrl.cli import main, make_parser
from relayrl.config import RunConfig, with_overrides
from relayrl import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header: the signature, then the IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", head
    return struct.unpack(">II", head[16:24])


def write_run(run_dir: Path, rows: list[dict], seed: int = 0, fmt: str = "csv", **overrides) -> Path:
    """A run directory with a real config.json (RunConfig.to_dict(), as the trainer writes it) and
    the rows as stats.csv (empty cells for NaN, as CsvLogger) or stats.jsonl (null for NaN)."""
    run_dir.mkdir(parents=True)
    config = with_overrides(RunConfig(), run_dir=str(run_dir), seed=seed, **overrides)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    keys = ["epoch", "round", "total_samples", "samples_in_round", "round_time", "return_train", "return_test"]
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    if fmt == "csv":
        with open(run_dir / "stats.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(keys)
            for row in clean:
                writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
    else:
        with open(run_dir / "stats.jsonl", "w") as f:
            for row in clean:
                f.write(json.dumps(row) + "\n")
    return run_dir


def linear_rows(steps: list[int], slope: float, offset: float, round_time: float = 2.0,
                test_every: int = 1) -> list[dict]:
    """Rows at ``steps`` whose returns are ``slope * steps + offset`` (test: every ``test_every``-th
    row, NaN in the others; train: 100 lower)."""
    rows, previous = [], 0
    for i, s in enumerate(steps):
        y = slope * s + offset
        rows.append({"epoch": 0, "round": i, "total_samples": s, "samples_in_round": s - previous,
                     "round_time": round_time, "return_train": y - 100.0,
                     "return_test": y if i % test_every == 0 else float("nan")})
        previous = s
    return rows


def read_csv_series(path: Path, key: str) -> tuple[list[float], list[float], list[float]]:
    """(total_samples, cumulative round_time, value) of the rows where ``key`` is set, read with the
    csv module (independently of relayrl.plots)."""
    xs, ts, ys, clock = [], [], [], 0.0
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            clock += float(row["round_time"])
            if row[key] != "":
                xs.append(float(row["total_samples"]))
                ts.append(clock)
                ys.append(float(row[key]))
    return xs, ts, ys


# --- relayrl plot ------------------------------------------------------------------------------------
def test_plot_of_two_runs_writes_the_png_and_draws_the_stats(tmp_path, capsys):
    a = write_run(tmp_path / "a", linear_rows([100, 250, 400, 550], 1.0, -1000.0, test_every=2), seed=0)
    b = write_run(tmp_path / "b", linear_rows([120, 300, 480], -0.5, -300.0, round_time=3.5), seed=1,
                  **{"training.epochs": 3})  # another configuration: its own curve, not a seed of a
    out = tmp_path / "both.png"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert f"wrote {out} (2 runs, 2 curves)" in capsys.readouterr().out
    assert png_size(out) == (int(plots.FIGSIZE[0] * plots.DPI), int(plots.FIGSIZE[1] * plots.DPI))
    assert not list(tmp_path.glob(".both.png.tmp-*"))  # written atomically, nothing left over

    drawn = plots.curves([a, b])
    assert [c.label for c in drawn] == [str(a), str(b)] and [c.run_dirs for c in drawn] == [[a], [b]]
    for curve, run in zip(drawn, (a, b)):
        for key in plots.RETURN_KEYS:
            xs, ts, ys = read_csv_series(run / "stats.csv", key)
            steps, clock = curve.series[(key, "env_steps")], curve.series[(key, "wall_clock")]
            assert steps.x.tolist() == xs and steps.y.tolist() == ys and steps.low is None
            assert clock.x.tolist() == pytest.approx(ts) and clock.y.tolist() == ys
    assert drawn[0].series[("return_test", "env_steps")].x.tolist() == [100.0, 400.0]  # NaN rows left out
    assert drawn[1].series[("return_train", "wall_clock")].x.tolist() == pytest.approx([3.5, 7.0, 10.5])


def test_default_output_files(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "runs" / "a", linear_rows([100, 200], 1.0, 0.0))
    b = write_run(tmp_path / "runs" / "b", linear_rows([100, 200], 2.0, 0.0), **{"training.rounds": 2})
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "runs/a"]) == 0
    assert png_size(a / "learning_curve.png")[0] > 0
    assert main(["plot", "runs/a", "runs/b"]) == 0
    assert png_size(tmp_path / "learning_curves.png")[0] > 0
    assert not (b / "learning_curve.png").exists()
    assert "wrote learning_curves.png (2 runs, 2 curves)" in capsys.readouterr().out


def test_seeds_of_one_config_are_drawn_as_mean_and_min_max_band(tmp_path):
    # three seeds (configs identical but for seed and run_dir), each linear in env steps on its own
    # grid, so that the interpolation onto the common grid is exact; and one other configuration
    lines = {0: (1.0, -900.0), 1: (2.0, -1000.0), 2: (0.5, -800.0)}
    grids = {0: [100, 200, 300, 400, 500], 1: [150, 250, 350, 450], 2: [120, 240, 360, 480, 600]}
    runs = [write_run(tmp_path / f"s{seed}", linear_rows(grids[seed], *lines[seed]), seed=seed) for seed in lines]
    other = write_run(tmp_path / "other", linear_rows([100, 200], 1.0, 0.0), seed=0, **{"sac.gamma": 0.98})
    assert plots.group_runs([runs[0], other, runs[1], runs[2], runs[0]]) == [runs, [other]]

    group, alone = plots.curves([runs[0], other, runs[1], runs[2]])
    assert group.run_dirs == runs and group.seeds == [0, 1, 2] and alone.run_dirs == [other]
    assert all(str(r) in group.label for r in runs) and "mean of 3 seeds" in group.label
    s = group.series[("return_test", "env_steps")]
    # the common grid: every seed's x inside the range all three cover, [150, 450]
    expected_grid = sorted({x for g in grids.values() for x in g if 150 <= x <= 450})
    assert s.x.tolist() == expected_grid
    values = np.array([[slope * x + offset for x in expected_grid] for slope, offset in lines.values()])
    np.testing.assert_allclose(s.y, values.mean(axis=0))
    np.testing.assert_allclose(s.low, values.min(axis=0))
    np.testing.assert_allclose(s.high, values.max(axis=0))
    t = group.series[("return_train", "wall_clock")]  # every round 2 s: the grid of seconds [2, 8]
    assert t.x.tolist() == [2.0, 4.0, 6.0, 8.0]
    assert np.all(t.low <= t.y) and np.all(t.y <= t.high) and np.all(t.low < t.high)
    assert alone.series[("return_test", "env_steps")].low is None

    out = tmp_path / "seeds.png"
    assert main(["plot", *map(str, runs), str(other), "-o", str(out)]) == 0
    assert png_size(out) == (int(plots.FIGSIZE[0] * plots.DPI), int(plots.FIGSIZE[1] * plots.DPI))


def test_jsonl_is_read_first_and_a_resume_supersedes_lost_rows(tmp_path):
    rows = linear_rows([100, 200, 300, 400], 1.0, 0.0)
    # killed after the row at 400; resumed from the checkpoint at 200: the next round starts at 200
    rows += [{"epoch": 1, "round": 0, "total_samples": 330, "samples_in_round": 130, "round_time": 2.0,
              "return_train": -5.0, "return_test": -7.0}]
    run = write_run(tmp_path / "run", rows, fmt="jsonl")
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"epoch": 1, "round": 1, "total_sam')  # a line cut short by a killed process
    (run / "stats.csv").write_text("total_samples,return_test,round_time\n1,2,3\n")  # not read
    assert plots.stats_file(run) == run / "stats.jsonl"
    (curve,) = plots.curves([run])
    test = curve.series[("return_test", "env_steps")]
    assert test.x.tolist() == [100.0, 200.0, 330.0] and test.y.tolist() == [100.0, 200.0, -7.0]
    assert curve.series[("return_test", "wall_clock")].x.tolist() == [2.0, 4.0, 6.0]


def test_without_matplotlib_the_command_says_how_to_install_it(tmp_path, monkeypatch, capsys, caplog):
    run = write_run(tmp_path / "run", linear_rows([100, 200], 1.0, 0.0))
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib... raises ImportError
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert ".venv/bin/pip install matplotlib" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (run / "learning_curve.png").exists()
    plots._logged.clear()
    with caplog.at_level(logging.DEBUG, logger="relayrl"):
        assert plots.write_learning_curve(run) is None
        assert plots.write_learning_curve(run) is None  # the trainer calls it every epoch
    said = [r for r in caplog.records if ".venv/bin/pip install matplotlib" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO, logging.DEBUG]  # said once at info level


def test_write_learning_curve_for_the_trainer(tmp_path):
    run = write_run(tmp_path / "run", linear_rows([100, 200], 1.0, 0.0))
    assert plots.write_learning_curve(run) == run / "learning_curve.png"
    assert png_size(run / "learning_curve.png")[1] == int(plots.FIGSIZE[1] * plots.DPI)
    empty = write_run(tmp_path / "empty", [{"total_samples": 50, "round_time": 1.0}])  # no episode yet
    assert plots.write_learning_curve(empty) is None and not (empty / "learning_curve.png").exists()
    assert plots.write_learning_curve(tmp_path / "missing") is None  # never raises


@pytest.mark.parametrize("case,expected", [
    ("missing", "no run directory at {p}: give the --run-dir of a run"),
    ("file", "{p} is a file, not a run directory: give the directory that holds stats.jsonl"),
    ("no_stats", "{p} has no stats.jsonl or stats.csv: give the run directory of a run that finished"),
    ("no_episode", "no episode has finished yet in {p}: nothing to draw; plot again after a few rounds"),
    ("bad_output", "cannot write {o}: the directory {d} does not exist"),
])
def test_plot_bad_inputs_get_one_line_with_the_fix(tmp_path, capsys, case, expected):
    p = tmp_path / "run"
    out = tmp_path / "nowhere" / "x.png"
    argv = ["plot", str(p)]
    if case == "file":
        p.write_text("not a run")
    elif case == "no_stats":
        p.mkdir()
        (p / "config.json").write_text("{}")
    elif case == "no_episode":
        write_run(p, [{"total_samples": 10, "round_time": 1.0}])
    elif case == "bad_output":
        write_run(p, linear_rows([100], 1.0, 0.0))
        argv += ["-o", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("relayrl: error: " + expected.format(p=p, o=out, d=out.parent)), captured.err
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.splitlines()[-1].split())


def test_help_and_imports_of_plot_and_eval_import_no_torch_nor_matplotlib():
    modules = _modules_after("import relayrl.cli, relayrl.plots, relayrl.evaluate\n"
                             "for argv in (['plot', '--help'], ['eval', '--help']):\n"
                             "    try:\n        relayrl.cli.main(argv)\n    except SystemExit:\n        pass")
    assert not {"torch", "matplotlib", "pandas"} & modules


# --- relayrl eval --------------------------------------------------------------------------------------
TRAINING = {"seed": 0, "workers.count": 1, "training.epochs": 2, "training.rounds": 8, "training.steps": 150,
            "training.torch_threads": 1, "workers.test_episode_interval": 1, "memory.batch_size": 128,
            "sac.hidden_sizes": [64, 64]}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """SAC on Pendulum-v1, trained a little (2 epochs of 8 rounds of 150 updates, about 2,650
    environment steps, lr 1e-3; small networks), a test episode after every training episode."""
    from relayrl.roles.local_run import run_local

    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = with_overrides(RunConfig(), run_dir=str(run), **TRAINING)
    assert cfg.agent.lr_actor == 1e-3
    run_local(cfg, progress=False, print_tables=False)
    return run


@pytest.mark.slow
def test_eval_mean_is_within_the_runs_last_test_episodes(trained_run, tmp_path, capsys):
    """The issue's check: relayrl eval on a trained Pendulum run prints a mean return within the
    range of the run's last test episodes. A policy still learning changes from one test episode to
    the next (the last epoch's test episodes of a run like the fixture's miss the final policy's mean
    more often than not), so the run goes on for one more epoch with its actor frozen
    (``sac.actor_update_interval`` out of reach: the critics keep training, the policy does not
    change): its test episodes, about one per round, are all the saved policy's, from random start
    states. About 24 of them: a sample range that misses the mean of a skewed return distribution
    (P(episode > mean) = 0.7) has a chance of 0.7 ** 24 = 2e-4."""
    from relayrl.roles.local_run import run_local

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    with np.load(run / "actor.npz") as archive:
        before = {name: archive[name] for name in archive.files}
    cfg = with_overrides(RunConfig(), run_dir=str(run), **{**TRAINING, "training.epochs": 3, "training.rounds": 24,
                                                            "training.steps": 200, "sac.actor_update_interval": 10**9})
    run_local(cfg, progress=False, print_tables=False)
    with np.load(run / "actor.npz") as archive:
        assert all(np.array_equal(before[name], archive[name]) for name in archive.files)  # frozen indeed
    with open(run / "stats.csv", newline="") as f:
        last = [float(r["return_test"]) for r in csv.DictReader(f) if r["epoch"] == "2" and r["return_test"]]
    assert len(last) >= 12

    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: 10 deterministic episodes of Pendulum-v1 (reset seeds 0-9)" in out
    assert f"policy from {run / 'actor.npz'} (newest checkpoint epoch-000003)" in out
    assert "length  mean 200.0 ± 0.0 (std)   min 200   max 200" in out
    mean = float(out.split("return  mean ")[1].split()[0])
    assert min(last) <= mean <= max(last), (mean, sorted(last))


def _rollouts(run: Path, actor, episodes: int, seed: int) -> list[float]:
    import gymnasium

    env = gymnasium.make("Pendulum-v1")
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(actor.act(obs, test=True))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def test_eval_runs_the_saved_policy_deterministically(trained_run):
    import torch

    from relayrl.config import config_from_dict
    from relayrl.evaluate import evaluate

    result = evaluate(trained_run, episodes=3, seed=7)
    assert result.lengths == [200, 200, 200] and result.policy == str(trained_run / "actor.npz")
    assert evaluate(trained_run, episodes=3, seed=7).returns == result.returns  # same seeds, same numbers
    assert evaluate(trained_run, episodes=3, seed=8).returns[:2] == result.returns[1:]  # episode i: seed S + i
    config = config_from_dict(json.loads((trained_run / "config.json").read_text()))
    spaces = config.env_spaces()
    saved = config.actor_factory()(*spaces).load(trained_run / "actor.npz")
    assert _rollouts(trained_run, saved, 3, 7) == result.returns  # exactly the saved weights' episodes
    torch.manual_seed(123)
    untrained = config.actor_factory()(*spaces)
    assert _rollouts(trained_run, untrained, 3, 7) != result.returns


def test_eval_reads_the_checkpoint_when_actor_npz_is_missing_or_older(trained_run, tmp_path):
    from relayrl.evaluate import evaluate

    expected = evaluate(trained_run, episodes=2, seed=3).returns
    copy = Path(shutil.copytree(trained_run, tmp_path / "copy"))
    npz = copy / "actor.npz"
    old = (copy / "checkpoints" / "epoch-000002" / "manifest.json").stat().st_mtime - 3600
    os.utime(npz, (old, old))  # as if the process died between the checkpoint and actor.npz
    result = evaluate(copy, episodes=2, seed=3)
    assert result.policy == str(copy / "checkpoints" / "epoch-000002") and result.returns == expected
    npz.unlink()
    result = evaluate(copy, episodes=2, seed=3)
    assert result.policy == str(copy / "checkpoints" / "epoch-000002") and result.returns == expected
    broken = Path(shutil.copytree(trained_run, tmp_path / "broken"))
    (broken / "checkpoints" / "latest").write_text("no-such-checkpoint\n")  # actor.npz still serves
    result = evaluate(broken, episodes=2, seed=3)
    assert result.policy == str(broken / "actor.npz") and result.returns == expected


@pytest.mark.parametrize("case,expected", [
    ("missing", "no run directory at {p}: give the --run-dir of a run"),
    ("file", "{p} is a file, not a run directory: give the directory that holds config.json and actor.npz"),
    ("no_config", "{p} has no config.json: give the run directory of a run that has started"),
    ("no_policy", "{p} has no saved policy yet (no actor.npz, no checkpoint): the trainer saves one at "
                  "the end of every epoch"),
])
def test_eval_errors_name_the_problem_and_the_fix(tmp_path, capsys, case, expected):
    p = tmp_path / "run"
    if case == "file":
        p.write_text("x")
    elif case == "no_config":
        p.mkdir()
    elif case == "no_policy":  # a run whose first epoch has not ended
        write_run(p, linear_rows([100], 1.0, 0.0))
    assert main(["eval", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relayrl: error: " + expected.format(p=p)), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_eval_flags(capsys):
    args = make_parser().parse_args(["eval", "runs/x"])
    assert (args.run_dir, args.episodes, args.seed, args.video) == ("runs/x", 10, 0, None)
    args = make_parser().parse_args(["eval", "runs/x", "--episodes", "3", "--seed", "5", "--video", "v"])
    assert (args.episodes, args.seed, args.video) == (3, 5, "v")
    for argv, message in ((["--episodes", "0"], "argument --episodes: must be >= 1, got 0"),
                          (["--episodes", "two"], "argument --episodes: takes an integer, got 'two'"),
                          (["--seed", "-1"], "argument --seed: must be >= 0, got -1")):
        with pytest.raises(SystemExit) as exc:
            main(["eval", "runs/x", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_eval_video(trained_run, tmp_path, capsys):
    videos = tmp_path / "videos"
    if _importable("pygame") and _importable("moviepy"):
        assert main(["eval", str(trained_run), "--episodes", "1", "--video", str(videos)]) == 0
        assert "videos  1 file in" in capsys.readouterr().out and len(list(videos.glob("eval*.mp4"))) == 1
        return
    # here the environment cannot render or moviepy is missing: one line saying what to install
    assert main(["eval", str(trained_run), "--episodes", "1", "--video", str(videos)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relayrl: error: --video: ") and len(err.splitlines()) == 1
    if not _importable("pygame"):
        assert "Pendulum-v1 cannot render frames here (environment 'Pendulum-v1' needs gymnasium's " in err
        assert '/pip install "gymnasium[classic_control]"' in err
    if not _importable("moviepy"):
        assert "needs moviepy, which is not installed: " in err and "/pip install moviepy" in err
    assert not videos.exists()


def test_plot_of_a_trained_run_draws_its_stats_csv(trained_run, tmp_path):
    out = tmp_path / "trained.png"
    path, (curve,) = plots.plot_runs([trained_run], out)
    assert path == out and png_size(out) == (int(plots.FIGSIZE[0] * plots.DPI), int(plots.FIGSIZE[1] * plots.DPI))
    for key in plots.RETURN_KEYS:  # the trainer's stats.jsonl and stats.csv hold the same rows
        xs, ts, ys = read_csv_series(trained_run / "stats.csv", key)
        assert curve.series[(key, "env_steps")].x.tolist() == xs and len(xs) > 0
        np.testing.assert_allclose(curve.series[(key, "env_steps")].y, ys)
        np.testing.assert_allclose(curve.series[(key, "wall_clock")].x, ts)

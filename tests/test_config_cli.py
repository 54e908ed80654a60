import subprocess
import sys

import pytest

from relayrl.cli import main, make_parser, build_config
from relayrl.config import ConfigError, RunConfig, load_config, with_overrides


def test_defaults_are_valid():
    c = RunConfig()
    assert c.env == "Pendulum-v1" and c.workers.count >= 1
    t = c.training
    assert t.epochs * t.rounds * t.steps <= 10_000  # the embedded default's budget


def test_embedded_sac_learning_rates_survive_a_partial_sac_table(tmp_path):
    from relayrl.algorithms import REGISTRY, SACConfig

    assert SACConfig().lr_critic == 3e-4  # the library's default stays SB3's
    assert RunConfig().agent.lr_critic == REGISTRY["sac"].run_defaults["lr_critic"] == 1e-3
    f = tmp_path / "run.toml"
    f.write_text("[sac]\ngamma = 0.98\nlr_actor = 5e-4\n")
    c = load_config(f)
    assert (c.agent.gamma, c.agent.lr_actor, c.agent.lr_critic, c.agent.lr_entropy) == (0.98, 5e-4, 1e-3, 1e-3)


def test_toml_file_and_flags_precedence(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('env = "MountainCarContinuous-v0"\nseed = 3\n[training]\nepochs = 4\nsteps = 50\n'
                 '[memory]\nbatch_size = 64\n[sac]\nlr_actor = 1e-3\nhidden_sizes = [64, 64]\n')
    c = load_config(f)
    assert (c.env, c.seed, c.training.epochs, c.training.steps, c.memory.batch_size) == \
        ("MountainCarContinuous-v0", 3, 4, 50, 64)
    assert c.agent.lr_actor == 1e-3 and tuple(c.agent.hidden_sizes) == (64, 64)
    args = make_parser().parse_args(["train", "--config", str(f), "--epochs", "2", "--workers", "3"])
    c = build_config(args)
    assert c.training.epochs == 2 and c.workers.count == 3 and c.training.steps == 50


@pytest.mark.parametrize("text,match", [
    ("[training]\nepochs = 0\n", "training.epochs must be a positive integer, got 0"),
    ("[training]\nupdate_model_interval = -3\n", "update_model_interval"),
    ("[training]\nbogus = 1\n", r"unknown key\(s\) \['bogus'\]"),
    ("nonsense = 1\n", "unknown key"),
    ("[training]\nstart_training = 5000\n[memory]\ncapacity = 1000\n", "exceeds memory.capacity"),
    ("[sac]\ngamma = 2.0\n", "gamma"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_config_files(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f)


def test_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert "relayrl: error: cannot read config file" in err and "Traceback" not in err


def test_cli_unknown_env_and_discrete_actions(tmp_path, capsys):
    assert main(["train", "--env", "NoSuchEnv-v9", "--run-dir", str(tmp_path / "r")]) == 2
    assert "unknown environment id 'NoSuchEnv-v9'" in capsys.readouterr().err
    assert main(["train", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "r")]) == 2
    assert "SAC needs continuous (Box) actions" in capsys.readouterr().err


def test_cli_negative_flag_value(tmp_path, capsys):
    assert main(["train", "--steps", "-5", "--run-dir", str(tmp_path / "r")]) == 2
    assert "training.steps must be a positive integer, got -5" in capsys.readouterr().err


def test_train_help_documents_flags():
    out = subprocess.run([sys.executable, "-m", "relayrl.cli", "train", "--help"],
                         capture_output=True, text=True, timeout=60).stdout
    for flag in ("--config", "--env", "--workers", "--epochs", "--rounds", "--steps", "--run-dir", "--seed"):
        assert flag in out


def test_overrides_skip_none():
    c = with_overrides(RunConfig(), **{"training.epochs": None, "seed": 5})
    assert c.seed == 5 and c.training.epochs == RunConfig().training.epochs


def test_import_has_no_side_effects(tmp_path):
    code = "import relayrl, relayrl.training_offline, relayrl.trainer, relayrl.cli; print('ok')"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created in HOME or the working directory


def test_print_config_writes_toml_that_config_reads_back(tmp_path, capsys):
    assert main(["train", "--print-config", "--epochs", "7", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "profiling = false" in text and "device" not in text  # TOML booleans; None left out
    path = tmp_path / "printed.toml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == text
    assert load_config(path).training.epochs == 7


def test_done_line_averages_the_latest_test_episodes():
    import pandas as pd

    from relayrl.cli import done_line

    def row(epoch, rnd, ret, n):
        return pd.Series({"epoch": epoch, "round": rnd, "total_samples": 1000 + rnd, "total_updates": 990 + rnd,
                          "return_test": ret, "episodes_test": n})

    rows = [row(0, 0, -900.0, 4), row(0, 1, -300.0, 3), row(0, 2, -100.0, 2), row(0, 3, float("nan"), 0)]
    line = done_line(rows, "runs/x")
    # the last round has no test episode: the latest 5 are the 2 of round 2 and the 3 of round 1
    assert line == ("done: 1003 env steps, 993 updates; mean test return -220.0 over the latest 5 test "
                    "episodes (since epoch 0, round 1); run directory runs/x")
    assert "no test episode finished" in done_line([row(0, 0, float("nan"), 0)], "r")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.splitlines()[-1].split())  # the last line; help text comes before


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["trainer", "--help"], ["worker", "--help"],
                                  ["relay", "--help"], ["keys", "--help"]])
def test_help_imports_no_torch(argv):
    """--help of every command prints without importing torch (or pandas): it returns at once."""
    modules = _modules_after("import relayrl.cli\ntry:\n    relayrl.cli.main(%r)\nexcept SystemExit:\n    pass" % argv)
    assert "torch" not in modules and "pandas" not in modules


def test_import_cli_and_config_errors_import_no_torch(tmp_path):
    assert "torch" not in _modules_after("import relayrl.cli")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sac]\ngamma = 3.0\n")
    code = f"import relayrl.cli\nassert relayrl.cli.main(['train', '--config', {str(bad)!r}]) == 2"
    assert "torch" not in _modules_after(code)
    code = "import relayrl.cli\nassert relayrl.cli.main(['train', '--steps', '-1']) == 2"
    assert "torch" not in _modules_after(code)
    code = "import relayrl.cli\nassert relayrl.cli.main(['keys', %r, '--workers', 'w0']) == 0" % str(tmp_path / "k")
    assert "torch" not in _modules_after(code)


def test_every_setting_has_a_flag_and_flags_set_them(capsys):
    """Flags are generated from the dataclasses: one per field, and each sets its field."""
    import dataclasses

    from relayrl.config import SECTIONS

    text = make_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(RunConfig):
        if f.name != "agent" and f.name not in SECTIONS:
            assert "--" + f.name.replace("_", "-") in text
    for table, cls in {**SECTIONS, "sac": type(RunConfig().agent)}.items():
        for f in dataclasses.fields(cls):
            assert f"--{table}.{f.name.replace('_', '-')}" in text, (table, f.name)
    args = make_parser().parse_args(["train", "--sac.hidden-sizes", "64,32", "--no-training.profiling",
                                     "--workers.env-steps-per-update", "none", "--training.prefetch", "false",
                                     "--sac.gamma", "0.9", "--memory.batch-size", "16"])
    c = build_config(args)
    assert c.agent.hidden_sizes == (64, 32) and c.training.profiling is False and c.agent.gamma == 0.9
    assert c.workers.env_steps_per_update is None and c.training.prefetch is False
    assert c.memory.batch_size == 16
    with pytest.raises(SystemExit):  # argparse's own error: usage and message, exit status 2
        main(["train", "--sac.hidden-sizes", "64,x"])
    assert "--sac.hidden-sizes takes values separated by commas" in capsys.readouterr().err
    assert main(["train", "--sac.gamma", "7", "--print-config"]) == 2
    assert "SACConfig.gamma=7.0 is invalid: use a number in [0, 1]" in capsys.readouterr().err


def test_rate_settings_that_deadlock_are_refused_with_the_inequality_and_the_fix():
    from relayrl.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError, match=r"0.5 x 1 = 0.5 < 1.*--workers.env-steps-per-update 1"):
        with_overrides(RunConfig(), **{"workers.env_steps_per_update": 0.5})
    with pytest.raises(ConfigError, match="deadlock"):
        with_overrides(RunConfig(), **{"workers.env_steps_per_update": 0.1,
                                       "training.max_training_steps_per_env_step": 5.0})
    # the high update-to-data settings of the README and unmetered workers are fine
    with_overrides(RunConfig(), **{"workers.env_steps_per_update": 0.2,
                                   "training.max_training_steps_per_env_step": 5.0})
    with_overrides(RunConfig(), **{"workers.env_steps_per_update": "none",
                                   "training.max_training_steps_per_env_step": 0.5})

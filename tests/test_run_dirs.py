"""Run directories: derived from the environment and the command (runs/<env>, runs/<env>-trainer),
shown by --print-config, kept when given, and the errors that say which --run-dir to pass."""
import pytest

from relayrl.checkpoint import CheckpointError
from relayrl.cli import main
from relayrl.config import RunConfig, default_run_dir, env_dir_name, load_config, with_overrides
from relayrl.trainer import Trainer

from helpers import ScriptedInterface


def small_config(run_dir=None, epochs=1, **overrides):
    settings = {"training.epochs": epochs, "training.rounds": 2, "training.steps": 5,
                "training.start_training": 16, "memory.batch_size": 8, "training.update_buffer_interval": 2,
                "training.update_model_interval": 3, "training.sleep_between_buffer_retrieval_attempts": 0.0,
                "training.torch_threads": 1, "training.device": "cpu", "sac.hidden_sizes": [16, 16]}
    if run_dir is not None:
        settings["run_dir"] = str(run_dir)
    return with_overrides(RunConfig(), **settings, **overrides)


def run(trainer):
    return trainer.run(ScriptedInterface(trainer.training, per_pull=10, episodes_per_pull=1))


def test_the_default_run_dir_comes_from_the_env_and_the_command():
    assert RunConfig().run_dir is None
    assert default_run_dir("Pendulum-v1") == "runs/Pendulum-v1"
    assert default_run_dir("Pendulum-v1", "trainer") == "runs/Pendulum-v1-trainer"
    assert default_run_dir("mypkg.envs:make_robot") == "runs/mypkg.envs-make_robot"
    assert env_dir_name("ALE/Pong-v5") == "ALE-Pong-v5" and env_dir_name("a b::c\\d") == "a-b-c-d"
    assert env_dir_name("../..") == "env" and "/" not in env_dir_name("x/../../y")
    assert RunConfig(env="MountainCarContinuous-v0").with_run_dir().run_dir == "runs/MountainCarContinuous-v0"
    assert RunConfig(run_dir="elsewhere").with_run_dir("trainer").run_dir == "elsewhere"  # given: kept
    with pytest.raises(ValueError, match="role must be one of"):
        default_run_dir("Pendulum-v1", "bogus")


def test_print_config_shows_the_derived_run_dir_and_reads_back(tmp_path, capsys):
    assert main(["train", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert '# run_dir = "runs/Pendulum-v1"  # derived from env' in text
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert load_config(path).run_dir is None  # still derived: another --env gets its own folder
    assert main(["train", "--config", str(path), "--env", "MountainCarContinuous-v0", "--print-config"]) == 0
    assert '# run_dir = "runs/MountainCarContinuous-v0"' in capsys.readouterr().out
    assert main(["trainer", "--config", str(path), "--print-config"]) == 0
    assert '# run_dir = "runs/Pendulum-v1-trainer"' in capsys.readouterr().out
    assert main(["train", "--run-dir", "runs/mine", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'run_dir = "runs/mine"' in out and "# run_dir" not in out
    assert main(["train", "--run-dir", "none", "--print-config"]) == 0  # "none": derived
    assert '# run_dir = "runs/Pendulum-v1"' in capsys.readouterr().out


def test_the_commands_derive_their_own_run_dir(monkeypatch):
    import relayrl.roles.local_run as local_run
    import relayrl.roles.remote_trainer as remote_trainer

    seen = {}
    monkeypatch.setattr(local_run, "run_local", lambda config, **kw: seen.setdefault("train", config.run_dir) and [])
    monkeypatch.setattr(remote_trainer, "run_trainer",
                        lambda config, plan, **kw: seen.setdefault("trainer", config.run_dir) and [])
    assert main(["train", "--env", "MountainCarContinuous-v0"]) == 0
    assert main(["trainer"]) == 0
    assert seen == {"train": "runs/MountainCarContinuous-v0", "trainer": "runs/Pendulum-v1-trainer"}
    seen.clear()
    assert main(["trainer", "--run-dir", "runs/x"]) == 0
    assert seen == {"trainer": "runs/x"}


def test_a_trainer_without_run_dir_uses_runs_env_and_an_explicit_one_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Trainer(small_config(), progress=False, print_tables=False).run_dir.as_posix() == "runs/Pendulum-v1"
    trainer = Trainer(small_config(), progress=False, print_tables=False, role="trainer")
    assert trainer.config.run_dir == "runs/Pendulum-v1-trainer"
    explicit = Trainer(small_config(tmp_path / "mine"), progress=False, print_tables=False)
    run(explicit)
    assert (tmp_path / "mine" / "checkpoints" / "latest").is_file()
    assert not (tmp_path / "runs").exists()  # nothing was written to the derived folders


def test_a_run_dir_that_is_a_file_is_refused_with_the_run_dir_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    assert main(["train", "--run-dir", "afile", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("relayrl: error: run directory afile is a file, not a folder: pass --run-dir runs/Pendulum-v1 "
            "(or move the file away)") in err
    assert "Errno" not in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["train", "--run-dir", "afile/run", "--no-progress"]) == 2
    assert "run directory afile/run cannot be created: afile is a file" in capsys.readouterr().err
    # the suggested folder works
    assert Trainer(small_config("runs/Pendulum-v1"), progress=False, print_tables=False).resumed_from is None
    # if the derived folder is the file, the suggestion is the next free one
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "Pendulum-v1-trainer").write_text("")
    with pytest.raises(ValueError, match=r"pass --run-dir runs/Pendulum-v1-trainer-2 "):
        Trainer(small_config(), progress=False, print_tables=False, role="trainer")


def test_another_algorithm_in_the_run_dir_is_refused_with_the_run_dir_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(Trainer(small_config(), progress=False, print_tables=False))  # runs/Pendulum-v1, SAC
    td3 = with_overrides(small_config(), algorithm="td3")
    with pytest.raises(CheckpointError, match=r"runs/Pendulum-v1 holds a run of algorithm 'sac', not 'td3': "
                       r"pass --run-dir runs/Pendulum-v1-td3 \(or --algorithm sac to resume"):
        Trainer(td3, progress=False, print_tables=False)
    assert Trainer(with_overrides(td3, run_dir="runs/Pendulum-v1-td3"), progress=False,
                   print_tables=False).resumed_from is None

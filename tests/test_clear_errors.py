"""Errors that lead to one action that works: a gymnasium extra that is not installed, a corrupt
latest checkpoint, and secret keys inside a git work tree."""
import importlib.util
import logging
import os
import shutil
import subprocess
from pathlib import Path

import gymnasium
import pytest

from relayrl.checkpoint import CheckpointError
from relayrl.cli import main
from relayrl.config import RunConfig, with_overrides
from relayrl.envs import make_env, pip_command
from relayrl.roles import key_setup
from relayrl.trainer import Trainer

from helpers import ScriptedInterface

REPO = Path(__file__).resolve().parents[1]


# --- a gymnasium extra that is not installed -------------------------------------------------------------
@pytest.fixture
def without_box2d(monkeypatch):
    """Box2D missing: as it is on this machine, or made so (gymnasium's own error) if it is installed."""
    if importlib.util.find_spec("Box2D") is not None:
        real_make = gymnasium.make

        def make(env_id, **kwargs):
            if env_id in ("LunarLander-v3", "CarRacing-v3", "BipedalWalker-v3"):
                raise gymnasium.error.DependencyNotInstalled(
                    'Box2D is not installed, you can install it by run `pip install swig` followed by '
                    '`pip install "gymnasium[box2d]"`')
            return real_make(env_id, **kwargs)

        monkeypatch.setattr(gymnasium, "make", make)


@pytest.mark.parametrize("env_id", ["LunarLander-v3", "CarRacing-v3"])
def test_a_missing_gymnasium_extra_names_it_and_the_pip_of_this_venv(env_id, without_box2d):
    with pytest.raises(ValueError) as info:
        make_env(env_id)
    message = str(info.value)
    fix = f'{pip_command()} install "gymnasium[box2d]"'
    assert message == (f"environment {env_id!r} needs gymnasium's 'box2d' extra, which is not installed in this "
                       f"Python; install it with: {fix}")
    assert "unknown environment id" not in message and "`pip install" not in message


def test_the_pip_command_is_this_venvs(monkeypatch):
    import sys

    if sys.prefix != sys.base_prefix:  # the project's .venv: .venv/bin/pip, relative from the repository
        monkeypatch.chdir(REPO)
        assert pip_command() == os.path.relpath(Path(sys.executable).parent / "pip", REPO)
        assert pip_command().endswith(os.path.join("bin", "pip"))
    else:  # pragma: no cover
        assert pip_command() == f"{sys.executable} -m pip"


def test_the_command_line_says_which_extra_is_missing(tmp_path, capsys, without_box2d):
    assert main(["train", "--env", "LunarLander-v3", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relayrl: error: environment 'LunarLander-v3' needs gymnasium's 'box2d' extra")
    assert f'{pip_command()} install "gymnasium[box2d]"' in err and "Traceback" not in err


def test_a_registered_env_whose_module_is_missing_says_so():
    gymnasium.register("RelayrlMissing-v0", entry_point="relayrl_no_such_package.envs:Env")
    try:
        with pytest.raises(ValueError, match=r"environment 'RelayrlMissing-v0' is registered but cannot be "
                           r"built: No module named 'relayrl_no_such_package'; install what it needs into this "
                           r"Python, e.g. .*pip install relayrl_no_such_package"):
            make_env("RelayrlMissing-v0")
    finally:
        del gymnasium.registry["RelayrlMissing-v0"]
    with pytest.raises(ValueError, match="unknown environment id 'NoSuchEnv-v9'"):
        make_env("NoSuchEnv-v9")


# --- a corrupt latest checkpoint -------------------------------------------------------------------------
def small_config(run_dir, epochs):
    return with_overrides(RunConfig(), **{
        "run_dir": str(run_dir), "training.epochs": epochs, "training.rounds": 2, "training.steps": 5,
        "training.start_training": 16, "memory.batch_size": 8, "training.update_buffer_interval": 2,
        "training.update_model_interval": 3, "training.sleep_between_buffer_retrieval_attempts": 0.0,
        "training.torch_threads": 1, "training.device": "cpu", "sac.hidden_sizes": [16, 16]})


def run(trainer):
    return trainer.run(ScriptedInterface(trainer.training, per_pull=10, episodes_per_pull=1))


def damage(checkpoint: Path) -> None:
    tensors = checkpoint / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))


def test_a_corrupt_latest_checkpoint_resumes_from_the_previous_one_with_a_warning(tmp_path, caplog):
    checkpoints = tmp_path / "run" / "checkpoints"
    run(Trainer(small_config(tmp_path / "run", 2), progress=False, print_tables=False))
    damage(checkpoints / "epoch-000002")
    with caplog.at_level(logging.WARNING, logger="relayrl"):
        resumed = Trainer(small_config(tmp_path / "run", 3), progress=False, print_tables=False)
    assert resumed.resumed_from == 1 and resumed.training.total_updates == 10
    warning = caplog.text
    assert f"{checkpoints / 'epoch-000002'} is corrupt" in warning
    assert f"resuming from the newest complete checkpoint instead: {checkpoints / 'epoch-000001'}" in warning
    rows = run(resumed)  # the run goes on: epochs 2 and 3 again, the corrupt checkpoint replaced
    assert len(rows) == 4 and (checkpoints / "latest").read_text().strip() == "epoch-000003"
    caplog.clear()
    again = Trainer(small_config(tmp_path / "run", 3), progress=False, print_tables=False)
    assert again.done and "corrupt" not in caplog.text


def test_deleting_the_corrupt_checkpoint_works_too(tmp_path, caplog):
    """The old advice: remove the corrupt folder; `latest` then names a folder that is gone."""
    checkpoints = tmp_path / "run" / "checkpoints"
    run(Trainer(small_config(tmp_path / "run", 2), progress=False, print_tables=False))
    shutil.rmtree(checkpoints / "epoch-000002")
    with caplog.at_level(logging.WARNING, logger="relayrl"):
        resumed = Trainer(small_config(tmp_path / "run", 2), progress=False, print_tables=False)
    assert resumed.resumed_from == 1 and "names checkpoint 'epoch-000002'" in caplog.text
    assert len(run(resumed)) == 2


def test_with_no_complete_checkpoint_the_message_says_what_to_delete_and_that_works(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    run(Trainer(small_config(tmp_path / "run", 1), progress=False, print_tables=False))
    damage(checkpoints / "epoch-000001")
    with pytest.raises(CheckpointError) as info:
        Trainer(small_config(tmp_path / "run", 1), progress=False, print_tables=False)
    message = str(info.value)
    assert message.startswith(f"no complete checkpoint in {checkpoints} ({checkpoints / 'epoch-000001'} is corrupt")
    assert message.endswith(f"to start the run afresh, delete {checkpoints}")
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"delete {checkpoints}" in err and "Traceback" not in err
    shutil.rmtree(checkpoints)  # the one action
    fresh = Trainer(small_config(tmp_path / "run", 1), progress=False, print_tables=False)
    assert fresh.resumed_from is None and len(run(fresh)) == 2


# --- keys ------------------------------------------------------------------------------------------------
def test_keys_inside_a_git_work_tree_are_warned_about(tmp_path, capsys):
    work_tree = tmp_path / "repo"
    (work_tree / ".git").mkdir(parents=True)  # what `git init` leaves; git itself is not needed
    keys = work_tree / "keys"
    assert key_setup.git_work_tree(keys) == work_tree and key_setup.git_work_tree(tmp_path / "x") is None
    assert main(["keys", str(keys), "--workers", "w0"]) == 0
    err = capsys.readouterr().err
    assert f"relayrl: warning: {keys} is inside the git work tree {work_tree}" in err
    assert f"add 'keys/' to {work_tree / '.gitignore'}" in err
    assert main(["keys", str(tmp_path / "outside"), "--workers", "w0"]) == 0
    assert capsys.readouterr().err == ""  # not in a work tree: nothing to say


def test_the_git_warning_without_git_and_with_an_ignored_folder(tmp_path, monkeypatch):
    work_tree = tmp_path / "repo"
    (work_tree / ".git").mkdir(parents=True)
    monkeypatch.setattr(key_setup.shutil, "which", lambda name: None)  # git not installed
    monkeypatch.setattr(key_setup.subprocess, "run", lambda *a, **k: pytest.fail("git was run"))
    [line] = key_setup.git_warnings(work_tree / "keys")
    assert "make sure git ignores it: add 'keys/' to" in line
    monkeypatch.undo()
    if shutil.which("git") is None:  # pragma: no cover
        return
    subprocess.run(["git", "init", "-q", str(work_tree)], check=True, capture_output=True)
    (work_tree / ".gitignore").write_text("keys/\n")
    (work_tree / "keys").mkdir()
    [line] = key_setup.git_warnings(work_tree / "keys")
    assert line.startswith("relayrl: note:") and "git ignores it" in line
    (work_tree / ".gitignore").write_text("")
    [line] = key_setup.git_warnings(work_tree / "keys")
    assert "git does not ignore it" in line


def test_secret_key_files_are_0600_and_loose_ones_are_tightened(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert main(["keys", str(keys), "--workers", "w0", "--relay"]) == 0
    secrets = [keys / "trainer.key_secret", keys / "relay.key_secret", keys / "workers" / "w0.key_secret"]
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in secrets)
    assert (keys / "trainer.key").stat().st_mode & 0o777 == 0o644
    os.chmod(keys / "workers" / "w0.key_secret", 0o644)  # e.g. copied with a loose umask
    capsys.readouterr()
    assert main(["keys", str(keys), "--workers", "w1"]) == 0
    out = capsys.readouterr().out
    assert f"{keys / 'workers' / 'w0.key_secret'} was readable by others: its permissions are now 0600" in out
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in [*secrets, keys / "workers" / "w1.key_secret"])


def test_the_repository_ignores_keys_and_runs():
    lines = (REPO / ".gitignore").read_text().split()
    assert "keys/" in lines and "runs/" in lines

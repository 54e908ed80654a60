"""Weights & Biases logging, the optional ``wandb`` extra: ``--wandb PROJECT`` logs every statistics
row at step ``total_samples`` with config.json as the W&B run's config, a resumed run continues the
same W&B run (its id is kept in the run directory), and without wandb installed ``--wandb`` stops
the run at start with the command that installs it.

The runs are offline (``WANDB_MODE=offline``, files under ``tmp_path``), and what they logged is read
back from W&B's own run file. The tests that need wandb skip when it is not installed
(``.venv/bin/pip install wandb``); the others run without it."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from relayrl.cli import build_config, main, make_parser
from relayrl.config import ConfigError, RunConfig, load_config, with_overrides

from helpers import ScriptedInterface


def small_config(run_dir, epochs=1, **extra):
    return with_overrides(RunConfig(), **{
        "run_dir": str(run_dir), "training.epochs": epochs, "training.rounds": 2,
        "training.steps": 5, "training.start_training": 16, "memory.batch_size": 8,
        "training.update_buffer_interval": 2, "training.update_model_interval": 3,
        "training.sleep_between_buffer_retrieval_attempts": 0.0, "training.torch_threads": 1,
        "training.device": "cpu", "sac.hidden_sizes": [16, 16], **extra})


def run(trainer):
    return trainer.run(ScriptedInterface(trainer.training, per_pull=10, episodes_per_pull=1))


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb (skipped if missing) in offline mode, every file of it under ``tmp_path``; returns the
    folder W&B writes its runs in (WANDB_DIR/wandb)."""
    pytest.importorskip("wandb")
    files = tmp_path / "wandb-files"
    files.mkdir()
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(files), "WANDB_CONSOLE": "off",
                        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "WANDB_ERROR_REPORTING": "false"}.items():
        monkeypatch.setenv(name, value)
    return files / "wandb"


# --- reading an offline run back ---------------------------------------------------------------------
def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): after a 7-byte header (``:W&B``, magic,
    version), a LevelDB-style log of 32 KiB blocks whose chunks each have a 7-byte header (CRC,
    little-endian length, type: 1 full, 2 first, 3 middle, 4 last); a record is a protobuf
    ``Record`` of ``wandb.proto.wandb_internal_pb2``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, position, chunks = 32768, 7, []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def offline_run(folder: Path) -> dict:
    """What an offline run folder holds: its config, its history as ``(step, {key: value})`` in
    order (W&B's own ``_step``, ``_runtime``, ``_timestamp`` left out) and its exit code."""
    [path] = folder.glob("run-*.wandb")
    config, history, exit_code = None, [], None
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run" and config is None:
            config = {_key(item): json.loads(item.value_json) for item in record.run.config.update}
            config.pop("_wandb", None)
        elif kind == "history":
            values = {_key(item): json.loads(item.value_json) for item in record.history.item}
            history.append((record.history.step.num,
                            {k: v for k, v in values.items() if k not in ("_step", "_runtime", "_timestamp")}))
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {"config": config, "history": history, "exit_code": exit_code}


def offline_runs(where: Path, run_id: str) -> list[dict]:
    """The offline runs of W&B run ``run_id`` under ``where``, oldest first: folders
    ``offline-run-<date>_<time>-<id>``, and ``...-<id>-1`` for a second one in the same second."""
    folders = [p for p in where.glob("offline-run-*") if re.search(rf"-{re.escape(run_id)}(-\d+)?$", p.name)]
    return [offline_run(folder) for folder in sorted(folders)]


def assert_logged(history, rows):
    """Each row at its step total_samples, with every number it holds (NaN: left out)."""
    assert [step for step, _ in history] == [int(row["total_samples"]) for row in rows]
    for (_, logged), row in zip(history, rows):
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                assert key not in logged, key
            else:
                assert logged[key] == pytest.approx(float(value)), key
        assert isinstance(logged["total_updates"], int)  # counters as integers, as in stats.jsonl


# --- the tests ----------------------------------------------------------------------------------------------
def test_every_row_reaches_the_wandb_run_and_a_resumed_run_continues_it(offline_wandb, tmp_path):
    from relayrl.trainer import Trainer

    run_dir = tmp_path / "run"
    first = Trainer(small_config(run_dir, epochs=1, wandb_project="relayrl-tests"), progress=False,
                    print_tables=False)
    rows = run(first)
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    [logged] = offline_runs(offline_wandb, run_id)
    assert len(rows) == 2
    assert_logged(logged["history"], rows)
    assert logged["config"] == json.loads((run_dir / "config.json").read_text())  # config.json, as it is
    assert logged["exit_code"] == 0

    # the same command with more epochs resumes the run, and W&B's run with it
    second = Trainer(small_config(run_dir, epochs=2, wandb_project="relayrl-tests"), progress=False,
                     print_tables=False)
    assert second.resumed_from == 1
    more = run(second)
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id
    runs = offline_runs(offline_wandb, run_id)
    assert len(runs) == 2 and len(more) == 2
    assert_logged(runs[1]["history"], more)
    assert runs[1]["history"][0][0] > logged["history"][-1][0]  # the steps go on increasing
    assert runs[1]["config"]["training"]["epochs"] == 2
    assert not (run_dir / "wandb").exists()  # WANDB_DIR is honoured


def test_wandb_files_go_to_the_run_directory_and_an_interrupted_run_is_marked_failed(offline_wandb, tmp_path,
                                                                                     monkeypatch):
    from relayrl.loggers import WandbLogger

    monkeypatch.delenv("WANDB_DIR")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = WandbLogger(run_dir, "relayrl-tests", {"env": "Pendulum-v1"}, name="a name")
    rows = [{"total_samples": 300, "total_updates": 200, "return_test": float("nan"), "loss": 0.5},
            {"total_samples": 600.0, "total_updates": 400.0, "return_test": -150.5, "loss": 0.25}]
    with pytest.raises(KeyboardInterrupt):
        try:
            for row in rows:
                logger.log(row)
            raise KeyboardInterrupt
        finally:
            logger.close()
    [logged] = offline_runs(run_dir / "wandb", logger.run_id)
    assert logged["config"] == {"env": "Pendulum-v1"} and logged["exit_code"] == 1
    assert logged["history"] == [(300, {"total_samples": 300, "total_updates": 200, "loss": 0.5}),
                                 (600, {"total_samples": 600, "total_updates": 400, "return_test": -150.5,
                                        "loss": 0.25})]


@pytest.mark.parametrize("command", [["train"], ["trainer", "--bind-buffers", "tcp://127.0.0.1:0",
                                                  "--bind-weights", "tcp://127.0.0.1:0"]])
def test_without_wandb_the_run_stops_at_start_with_the_install_command(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    run_dir = tmp_path / "run"
    assert main([*command, "--wandb", "my-project", "--run-dir", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("relayrl: error: --wandb (wandb_project) needs the wandb "
                                               "package, which is not installed: run ")
    assert "pip install wandb (or " in err[0] and 'pip install -e ".[wandb]", the wandb extra)' in err[0]
    assert not run_dir.exists()  # nothing was started


def test_wandb_settings_are_flags_and_toml_keys(tmp_path, capsys):
    args = make_parser().parse_args(["trainer", "--wandb", "my-project", "--wandb-run-name", "seed 1",
                                     "--wandb-mode", "offline"])
    config = build_config(args)
    assert (config.wandb_project, config.wandb_run_name, config.wandb_mode) == ("my-project", "seed 1", "offline")
    assert build_config(make_parser().parse_args(["train", "--wandb-project", "p"])).wandb_project == "p"
    assert RunConfig().wandb_project is None  # off unless asked for

    assert main(["train", "--print-config"]) == 0
    assert "wandb" not in capsys.readouterr().out  # unset: not in the file
    assert main(["train", "--wandb", "my-project", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert 'wandb_project = "my-project"' in text
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert load_config(path).wandb_project == "my-project"

    assert main(["train", "--wandb-mode", "sometimes", "--print-config"]) == 2
    assert "wandb_mode must be one of online, offline, disabled" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="wandb_project must be a W&B project name"):
        with_overrides(RunConfig(), wandb_project="team/project")


def test_a_wandb_start_failure_is_one_line_with_the_fix(offline_wandb, tmp_path, monkeypatch):
    import wandb

    from relayrl.loggers import WandbLogger

    def refuse(**options):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(ValueError, match=r"W&B could not start the run \(UsageError: No API key configured.*"
                                         r"\); log in with .*wandb login \(or set WANDB_API_KEY\), or log to "
                                         r"local files with --wandb-mode offline"):
        WandbLogger(tmp_path, "p")


def test_wandb_is_imported_only_when_asked_for(tmp_path):
    code = ("import sys\nimport relayrl.cli, relayrl.loggers, relayrl.trainer\n"
            "assert relayrl.cli.main(['train', '--wandb', 'p', '--print-config']) == 0\n"
            "print('wandb' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_seeds_logged_to_wandb_under_their_own_names_are_still_one_curve(tmp_path):
    from relayrl import plots

    runs = []
    for seed in (0, 1):
        config = small_config(tmp_path / f"s{seed}", seed=seed, wandb_project="p", wandb_run_name=f"seed {seed}")
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "config.json").write_text(json.dumps(config.to_dict()))
        runs.append(tmp_path / f"s{seed}")
    assert plots.group_runs(runs) == [runs]

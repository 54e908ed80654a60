"""Trainer: run directory, checkpoint round trip and resume, corrupt checkpoints, loggers."""
import json

import pandas as pd
import pytest
import torch

from relayrl.checkpoint import CheckpointError
from relayrl.cli import main
from relayrl.config import RunConfig, with_overrides
from relayrl.trainer import Trainer

from helpers import ScriptedInterface


def small_config(run_dir, epochs=2):
    return with_overrides(RunConfig(), **{
        "run_dir": str(run_dir), "training.epochs": epochs, "training.rounds": 2,
        "training.steps": 5, "training.start_training": 16, "memory.batch_size": 8,
        "training.update_buffer_interval": 2, "training.update_model_interval": 3,
        "training.sleep_between_buffer_retrieval_attempts": 0.0, "training.torch_threads": 1,
        "training.device": "cpu", "sac.hidden_sizes": [16, 16]})


def run(trainer):
    iface = ScriptedInterface(trainer.training, per_pull=10, episodes_per_pull=1)
    return trainer.run(iface)


def test_run_writes_stats_checkpoints_and_actor(tmp_path):
    cfg = small_config(tmp_path / "run")
    trainer = Trainer(cfg, progress=False, print_tables=False)
    rows = run(trainer)
    assert len(rows) == 4 and trainer.training.epoch == 2
    d = tmp_path / "run"
    csv = pd.read_csv(d / "stats.csv")
    assert len(csv) == 4 and list(csv["total_updates"]) == [5, 10, 15, 20]
    lines = (d / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["memory_len"] > 0
    assert (d / "checkpoints" / "latest").read_text().strip() == "epoch-000002"
    assert (d / "actor.npz").exists() and any((d / "tensorboard").iterdir())
    assert json.loads((d / "config.json").read_text())["training"]["epochs"] == 2


def test_resume_continues_with_identical_state(tmp_path):
    cfg = small_config(tmp_path / "run", epochs=1)
    first = Trainer(cfg, progress=False, print_tables=False)
    run(first)
    # the same command with more epochs resumes from the checkpoint
    second = Trainer(small_config(tmp_path / "run", epochs=2), progress=False, print_tables=False)
    assert second.resumed_from == 1
    a, b = first.training, second.training
    assert (b.epoch, b.total_updates, b.total_samples) == (a.epoch, a.total_updates, a.total_samples)
    sa, sb = a.agent.state_dict(), b.agent.state_dict()

    def same(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y))
        return x == y

    assert same(sa, sb)
    assert len(a.memory) == len(b.memory)
    for x, y in zip(a.memory.sample(), b.memory.sample()):  # same contents, same sampler state
        assert torch.equal(x, y)
    rows = run(second)
    assert len(rows) == 2 and second.training.epoch == 2
    assert len(pd.read_csv(tmp_path / "run" / "stats.csv")) == 4  # appended, not restarted


def test_finished_run_does_nothing_more(tmp_path):
    cfg = small_config(tmp_path / "run", epochs=1)
    run(Trainer(cfg, progress=False, print_tables=False))
    again = Trainer(cfg, progress=False, print_tables=False)
    assert again.done and run(again) == []


def test_corrupt_checkpoint_gives_clear_error(tmp_path, capsys):
    cfg = small_config(tmp_path / "run", epochs=1)
    run(Trainer(cfg, progress=False, print_tables=False))
    tensors = tmp_path / "run" / "checkpoints" / "epoch-000001" / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(cfg, progress=False, print_tables=False)
    # through the command line: one clear line, no traceback
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "corrupt" in err and "Traceback" not in err


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    cfg = small_config(tmp_path / "run", epochs=1)
    run(Trainer(cfg, progress=False, print_tables=False))
    manifest = tmp_path / "run" / "checkpoints" / "epoch-000001" / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(CheckpointError):
        Trainer(cfg, progress=False, print_tables=False)


def test_other_env_in_run_dir_is_refused_with_the_run_dir_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the suggested run directories are relative
    cfg = small_config(tmp_path / "run", epochs=1)
    run(Trainer(cfg, progress=False, print_tables=False))
    other = with_overrides(cfg, env="MountainCarContinuous-v0")
    with pytest.raises(CheckpointError, match=r"holds a run on 'Pendulum-v1', not 'MountainCarContinuous-v0': "
                       r"to train 'MountainCarContinuous-v0', pass --run-dir runs/MountainCarContinuous-v0 "
                       r"\(or --env Pendulum-v1 to resume"):
        Trainer(other, progress=False, print_tables=False)
    # the suggested directory works
    assert Trainer(with_overrides(other, run_dir="runs/MountainCarContinuous-v0"), progress=False,
                   print_tables=False).resumed_from is None


def test_interrupt_saves_a_partial_checkpoint(tmp_path):
    cfg = small_config(tmp_path / "run", epochs=3)
    trainer = Trainer(cfg, progress=False, print_tables=False)

    class Interrupting(ScriptedInterface):
        def broadcast_model(self, actor):
            if self.training.total_updates >= 12:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.run(Interrupting(trainer.training, per_pull=10))
    resumed = Trainer(cfg, progress=False, print_tables=False)
    assert resumed.training.total_updates == 12 and resumed.training.epoch == 1


def test_default_torch_threads_leave_a_core_and_split_for_the_parallel_update(monkeypatch):
    import relayrl.trainer as trainer_module

    for cores, serial, parallel in ((1, 1, 1), (2, 1, 1), (4, 3, 1), (8, 7, 3)):
        monkeypatch.setattr(trainer_module, "available_cores", lambda c=cores: c)
        assert trainer_module.default_torch_threads(False) == serial
        assert trainer_module.default_torch_threads(True) == parallel


def test_ctrl_c_inside_an_epoch_resumes_at_the_round_it_had_not_finished(tmp_path):
    cfg = with_overrides(small_config(tmp_path / "run", epochs=2), **{"training.rounds": 4})
    trainer = Trainer(cfg, progress=False, print_tables=False)

    class Interrupting(ScriptedInterface):
        def broadcast_model(self, actor):
            # inside round 2 of epoch 0 (updates 10-15): rounds 0 and 1 are done
            if self.training.total_updates >= 12:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.run(Interrupting(trainer.training, per_pull=10))
    resumed = Trainer(cfg, progress=False, print_tables=False)
    assert (resumed.training.epoch, resumed.training.round) == (0, 2)
    run(resumed)
    stats = pd.read_csv(tmp_path / "run" / "stats.csv")
    # every (epoch, round) once: round 2 of epoch 0 is trained again, rounds 0-1 are not
    assert list(zip(stats["epoch"], stats["round"])) == [(0, 0), (0, 1), (0, 2), (0, 3),
                                                         (1, 0), (1, 1), (1, 2), (1, 3)]
    assert resumed.training.epoch == 2 and resumed.training.round == 0


def test_after_a_kill_the_statistics_agree_with_the_checkpoint_and_hold_no_duplicate(tmp_path):
    run_dir = tmp_path / "run"
    first = Trainer(small_config(run_dir, epochs=1), progress=False, print_tables=False)
    run(first)
    checkpoint_updates = first.training.total_updates
    # what a run killed inside its next epoch leaves: rows past the checkpoint, a line cut off
    jsonl = (run_dir / "stats.jsonl").read_text().splitlines()
    ghost = json.loads(jsonl[-1])
    ghost.update(epoch=1, round=0, total_updates=checkpoint_updates + 5)
    with open(run_dir / "stats.jsonl", "a") as f:
        f.write(json.dumps(ghost) + "\n" + '{"epoch": 1, "round": 1, "total_upd')
    csv_lines = (run_dir / "stats.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    ghost_csv = csv_lines[-1].split(",")
    ghost_csv[header.index("epoch")] = "1"
    ghost_csv[header.index("total_updates")] = str(checkpoint_updates + 5)
    with open(run_dir / "stats.csv", "a") as f:
        f.write(",".join(ghost_csv) + "\n")

    second = Trainer(small_config(run_dir, epochs=2), progress=False, print_tables=False)
    assert len((run_dir / "stats.jsonl").read_text().splitlines()) == len(jsonl)  # ghosts gone
    assert len(pd.read_csv(run_dir / "stats.csv")) == len(jsonl)
    run(second)
    for rows in (pd.read_csv(run_dir / "stats.csv"),
                 pd.DataFrame([json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()])):
        pairs = list(zip(rows["epoch"], rows["round"]))
        assert pairs == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert list(rows["total_updates"]) == sorted(rows["total_updates"])


def test_a_resumed_run_asks_tensorboard_to_purge_the_events_after_its_checkpoint(tmp_path, monkeypatch):
    import tensorboardX

    opened = []
    original = tensorboardX.SummaryWriter

    def recording(logdir, purge_step=None, **kwargs):
        opened.append(purge_step)
        return original(logdir, purge_step=purge_step, **kwargs)

    monkeypatch.setattr(tensorboardX, "SummaryWriter", recording)
    first = Trainer(small_config(tmp_path / "run", epochs=1), progress=False, print_tables=False)
    run(first)
    second = Trainer(small_config(tmp_path / "run", epochs=2), progress=False, print_tables=False)
    run(second)
    assert opened == [None, first.training.total_samples + 1]

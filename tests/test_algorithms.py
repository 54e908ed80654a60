"""The algorithm registry: lookups, clear errors, and a new algorithm run end to end through
``relayrl train --algorithm`` without editing the trainer, the configuration or the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relayrl.algorithms import REGISTRY, Algorithm, get_algorithm, register
from relayrl.config import ConfigError, RunConfig, config_from_dict

TESTS = Path(__file__).parent


def test_registry_entries_resolve_without_torch_until_used():
    code = ("import sys; from relayrl.algorithms import REGISTRY; from relayrl.config import RunConfig; "
            "c = RunConfig(); assert c.agent is not None; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    for name, spec in REGISTRY.items():
        assert spec.name == name
        agent_cls = spec.agent_class()
        assert callable(agent_cls) and callable(spec.make_actor_factory(spec.settings()))


def test_unknown_algorithm_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown algorithm 'nope'; known: \[") as error:
        RunConfig(algorithm="nope")
    for name in ("sac", "td3", "redq", "droq", "crossq"):
        assert f"'{name}'" in str(error.value)
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        RunConfig(algorithm="no_such_module:ALGORITHM")


def test_settings_table_is_named_after_the_algorithm(monkeypatch):
    sys.path.insert(0, str(TESTS))
    monkeypatch.setattr(sys, "path", sys.path)
    import tiny_algorithm

    monkeypatch.setitem(REGISTRY, "tiny", tiny_algorithm.ALGORITHM)
    c = config_from_dict({"algorithm": "tiny", "tiny": {"lr": 0.5}})
    assert isinstance(c.agent, tiny_algorithm.TinyConfig) and c.agent.lr == 0.5
    assert c.to_dict()["tiny"] == {"lr": 0.5} and "sac" not in c.to_dict()
    with pytest.raises(ConfigError, match=r"named after the algorithm, \[tiny\] here"):
        config_from_dict({"algorithm": "tiny", "sac": {"gamma": 0.9}})
    with pytest.raises(ConfigError, match="tiny.lr must be > 0"):
        config_from_dict({"algorithm": "tiny", "tiny": {"lr": -1}})


def test_register_refuses_other_objects():
    with pytest.raises(TypeError, match="takes an Algorithm"):
        register("sac")
    assert isinstance(get_algorithm("sac"), Algorithm)


@pytest.mark.slow
def test_a_new_algorithm_runs_end_to_end_through_relayrl_train(tmp_path):
    """One new module (tests/tiny_algorithm.py) plus one registry entry (its ALGORITHM), and
    ``relayrl train --algorithm`` runs it: trainer, local workers, checkpoints, statistics."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "relayrl.cli", "train", "--algorithm", "tiny_algorithm:ALGORITHM",
           "--run-dir", str(run_dir), "--epochs", "2", "--rounds", "2", "--steps", "20",
           "--start-training", "64", "--memory.batch-size", "32", "--workers", "1",
           "--training.update-model-interval", "10", "--training.update-buffer-interval", "10",
           "--tiny.lr", "0.05", "--no-progress", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "done:" in out.stdout
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "epoch-000002"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algorithm"] == "tiny_algorithm:ALGORITHM" and config["tiny"] == {"lr": 0.05}
    header = (run_dir / "stats.csv").read_text().splitlines()[0].split(",")
    assert "loss_tiny" in header

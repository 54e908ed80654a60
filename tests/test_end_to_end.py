"""End to end: `relayrl train` machinery (trainer + 2 worker processes over ZeroMQ on loopback)
learns Pendulum-v1 on a short budget."""
import math

import pandas as pd
import pytest

from relayrl.config import RunConfig, with_overrides
from relayrl.roles.local_run import run_local


@pytest.mark.slow
def test_pendulum_return_improves(tmp_path):
    cfg = with_overrides(RunConfig(), **{
        "run_dir": str(tmp_path / "run"), "seed": 0, "workers.count": 2,
        "training.epochs": 2, "training.rounds": 9, "training.steps": 250,
        "workers.test_episode_interval": 1})
    rows = run_local(cfg, progress=False, print_tables=False)
    assert len(rows) == 18
    stats = pd.read_csv(tmp_path / "run" / "stats.csv")
    assert len(stats) == 18
    early = stats["return_train"].dropna().iloc[:2].mean()          # about -1200 for a random policy
    late = stats["return_test"].dropna().iloc[-3:].mean()
    assert not math.isnan(late), "no test episode finished"
    assert late > max(early + 400, -700), (early, late)
    last = rows[-1]
    # the two-sided rate control kept updates and samples in step
    assert 0.8 <= last["update_to_data_ratio"] <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "epoch-000002"

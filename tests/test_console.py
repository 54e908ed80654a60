"""What a user reads: the per-round table, the progress bar, log lines around it, and integer
counters in stats.csv / stats.jsonl."""
import contextlib
import json
import logging
import math
import re
import sys

import pandas as pd
import pytest

from relayrl.config import RunConfig, with_overrides
from relayrl.loggers import (ConsoleTable, CsvLogger, JsonlLogger, format_integer, format_metric,
                             logging_around_bar, main_loss_key, plain_record)
from relayrl.trainer import Trainer

from helpers import ScriptedInterface


def small_config(run_dir, epochs=2):
    return with_overrides(RunConfig(), **{
        "run_dir": str(run_dir), "training.epochs": epochs, "training.rounds": 2,
        "training.steps": 5, "training.start_training": 16, "memory.batch_size": 8,
        "training.update_buffer_interval": 2, "training.update_model_interval": 3,
        "training.sleep_between_buffer_retrieval_attempts": 0.0, "training.torch_threads": 1,
        "training.device": "cpu", "sac.hidden_sizes": [16, 16]})


def a_row(i: int, **extra) -> pd.Series:
    """A row as the loop makes it: a float Series (so counters are floats, 10060.0)."""
    return pd.Series({"epoch": 3, "round": i, "total_updates": 10_000 + i, "total_samples": 10_060 + i,
                      "memory_len": 1_000_000, "round_time": 2.0, "idle_time": 0.5,
                      "updates_per_second": 100.25, "update_to_data_ratio": 0.994,
                      "return_train": -1234.56, "return_test": math.nan, "episodes_train": 4,
                      "episodes_test": 0, "loss_actor": 3.5, "loss_critic": 0.012345, **extra})


def test_the_table_is_one_fixed_width_line_per_round_with_a_header_every_n_rows():
    table = ConsoleTable(header_every=3)
    printed = [table.lines(a_row(i)) for i in range(7)]
    assert [len(lines) for lines in printed] == [2, 1, 1, 2, 1, 1, 2]  # header before rows 0, 3, 6
    header, first = printed[0]
    assert header.split() == ["epoch", "round", "updates", "env", "steps", "memory", "upd/s", "idle%", "ret",
                              "train", "ret", "test", "eps", "tr/te", "upd/smp", "loss_critic"]
    assert first.split() == ["3", "0", "10000", "10060", "1000000", "100.2", "25%", "-1234.6", "-", "4/0",
                             "0.99", "0.01235"]
    lines = [line for chunk in printed for line in chunk]
    assert len({len(line) for line in lines}) == 1 and len(header) <= 120  # fixed width
    assert not any("e+" in line for line in lines)  # never 1.006e+04


def test_numbers_are_formatted_for_reading():
    assert format_integer(10_060.0) == "10060" and format_integer(float("nan")) == "-"
    assert [format_metric(v) for v in (1234.567, 12.3456, 0.0123456, 2.5e6, 0.0)] == [
        "1235", "12.35", "0.01235", "2.50e+06", "0"]
    assert main_loss_key(["q_mean", "loss_actor", "loss_critic"]) == "loss_critic"
    assert main_loss_key(["loss_tiny", "q"]) == "loss_tiny" and main_loss_key(["q"]) is None
    assert ConsoleTable().lines(pd.Series({"epoch": 0.0}))[1].split()[:2] == ["0", "-"]


def test_counters_are_integers_in_the_csv_and_jsonl_files(tmp_path):
    row = a_row(0)
    row["policy_version"] = 7  # an int of the transport's accounting, held as a float by the row
    keys = {"policy_version"} | set(plain_record(row).keys()) & {"epoch", "round", "total_updates",
                                                                  "total_samples", "memory_len",
                                                                  "episodes_train", "episodes_test"}
    csv_logger, jsonl_logger = CsvLogger(tmp_path / "s.csv", keys), JsonlLogger(tmp_path / "s.jsonl", keys)
    csv_logger.log(row)
    jsonl_logger.log(row)
    record = json.loads((tmp_path / "s.jsonl").read_text())
    assert {k: record[k] for k in ("epoch", "total_updates", "memory_len", "episodes_train", "policy_version")} \
        == {"epoch": 3, "total_updates": 10_000, "memory_len": 1_000_000, "episodes_train": 4, "policy_version": 7}
    assert all(type(record[k]) is int for k in keys)
    assert type(record["return_train"]) is float and record["return_test"] is None
    values = dict(zip(*[line.split(",") for line in (tmp_path / "s.csv").read_text().splitlines()]))
    assert values["total_updates"] == "10000" and values["total_samples"] == "10060"
    assert values["policy_version"] == "7" and values["return_test"] == ""


def test_a_run_writes_integer_counters_and_the_transport_ints(tmp_path):
    trainer = Trainer(small_config(tmp_path / "run"), progress=False, print_tables=False)
    trainer.row_extras = lambda: {"policy_version": 4, "policy_lag_mean": 0.5}
    trainer.run(ScriptedInterface(trainer.training, per_pull=10, episodes_per_pull=1))
    lines = (tmp_path / "run" / "stats.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    for key in ("epoch", "round", "total_updates", "total_samples", "memory_len", "samples_in_round",
                "episodes_train", "episodes_test", "buffers_rejected", "samples_rejected", "policy_version"):
        assert type(first[key]) is int, key
    assert '"total_updates": 5,' in lines[0] and type(first["policy_lag_mean"]) is float
    header, row = (tmp_path / "run" / "stats.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    assert values["total_updates"] == "5" and values["epoch"] == "0" and values["policy_version"] == "4"


BAR = re.compile(r"(\d+)/(\d+) \[[^\]]*epoch (\d+) round (\d+) \| (\d+) env steps \| return (test|train) (\S+)\]")


@contextlib.contextmanager
def console_log():
    """A console handler on the root logger, as ``relayrl``'s command line installs one (made in the
    test itself: capsys replaces sys.stderr only while the test runs)."""
    handler = logging.StreamHandler(sys.stderr)  # capsys's stderr, where the bar goes too
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_log_lines_go_around_the_bar_which_shows_the_numbers_of_the_row(tmp_path, capsys):
    with console_log() as handler:
        trainer = Trainer(small_config(tmp_path / "run"), progress=True, print_tables=True)
        rows = trainer.run(ScriptedInterface(trainer.training, per_pull=10, episodes_per_pull=1))
        assert handler in logging.getLogger().handlers  # put back after the run
    err = capsys.readouterr().err
    # every log line and every table line starts a line of its own: never after the bar's text
    screen = [line.split("\r")[-1] for line in err.split("\n")]
    logged = [line for line in screen if "epoch 1 done" in line or "epoch 2 done" in line]
    assert len(logged) == 2 and all(line.startswith("relayrl INFO: epoch") for line in logged), logged
    table = [line for line in screen if line.lstrip().startswith("epoch  round")]
    assert len(table) == 1  # one header for 4 rows
    for row in rows:  # each row's line is printed as is
        assert any(line.split()[:4] == [str(int(row[k])) for k in ("epoch", "round", "total_updates",
                                                                   "total_samples")] for line in screen)
    # the bar shows the row's own numbers (the count is its total_updates), not the previous one's
    by_round = {(int(r["epoch"]), int(r["round"])): r for r in rows}
    states = BAR.findall(err)
    assert states
    for n, total, epoch, rnd, samples, which, ret in states:
        row = by_round[(int(epoch), int(rnd))]
        assert (int(n), int(total), int(samples)) == (int(row["total_updates"]), 20, int(row["total_samples"]))
        assert ret == f"{row['return_' + which]:.1f}"
    assert (states[-1][2], states[-1][3]) == ("1", "1")


def test_print_tables_false_prints_no_table(tmp_path, capsys):
    trainer = Trainer(small_config(tmp_path / "run", epochs=1), progress=False, print_tables=False)
    trainer.run(ScriptedInterface(trainer.training, per_pull=10, episodes_per_pull=1))
    captured = capsys.readouterr()
    assert "epoch  round" not in captured.err and captured.out == ""


def test_logging_around_the_bar_leaves_other_handlers_alone(tmp_path):
    root = logging.getLogger()
    console, to_file = logging.StreamHandler(sys.stderr), logging.FileHandler(tmp_path / "log.txt")
    console.setLevel(logging.WARNING)
    root.addHandler(console)
    root.addHandler(to_file)
    try:
        before = list(root.handlers)
        with logging_around_bar():
            swapped = [h for h in root.handlers if h not in before]
            assert len(swapped) == 1 and swapped[0].level == logging.WARNING and to_file in root.handlers
        assert root.handlers == before
    finally:
        root.removeHandler(console)
        root.removeHandler(to_file)
        to_file.close()

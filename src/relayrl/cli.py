"""The ``relayrl`` command line."""
from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, RunConfig, load_config, with_overrides

TRAIN_HELP = """\
Train SAC with local rollout-worker processes (defaults: Pendulum-v1, 2 workers, 10 epochs of
5 rounds of 200 updates, about 10,000 environment steps). Shows progress, prints a statistics
table per round, writes stats.csv, stats.jsonl and TensorBoard events to the run directory, and
checkpoints after every epoch. Running the same command again resumes from the last checkpoint;
Ctrl+C saves and exits. Precedence: defaults < --config FILE < flags. Every setting, with its
documentation, is a field of relayrl.config (print them with --print-config)."""


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings (see README)")
    parser.add_argument("--env", help="gymnasium environment id (default Pendulum-v1)")
    parser.add_argument("--workers", type=int, metavar="N", help="local worker processes (default 2)")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs (checkpoint after each; default 10)")
    parser.add_argument("--rounds", type=int, metavar="N", help="rounds per epoch (one stats row each; default 5)")
    parser.add_argument("--steps", type=int, metavar="N", help="training steps per round (default 200)")
    parser.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/pendulum)")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed (default 0)")
    parser.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: automatic)")
    parser.add_argument("--start-training", type=int, metavar="N",
                        help="samples in memory before the first update (default 256)")
    parser.add_argument("--profiling", action="store_true", default=None,
                        help="profile every epoch with pyinstrument and log the report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="no per-round tables")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resulting configuration as TOML-like text and exit")


def build_config(args: argparse.Namespace) -> RunConfig:
    config = load_config(args.config) if args.config else RunConfig()
    return with_overrides(config, **{
        "env": args.env, "seed": args.seed, "run_dir": args.run_dir,
        "workers.count": args.workers, "training.epochs": args.epochs,
        "training.rounds": args.rounds, "training.steps": args.steps,
        "training.device": args.device, "training.start_training": args.start_training,
        "training.profiling": args.profiling,
    })


def _print_config(config: RunConfig) -> None:
    data = config.to_dict()
    for key, value in data.items():
        if not isinstance(value, dict):
            print(f"{key} = {value!r}")
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"\n[{key}]")
            for k, v in value.items():
                print(f"{k} = {v!r}")


def cmd_train(args: argparse.Namespace) -> int:
    from .local import run_local
    config = build_config(args)
    if args.print_config:
        _print_config(config)
        return 0
    rows = run_local(config, progress=not args.no_progress, print_tables=not args.quiet)
    if rows:
        last = rows[-1]
        print(f"done: {int(last['total_samples'])} env steps, {int(last['total_updates'])} updates; "
              f"last test return {last['return_test']:.1f}; run directory {config.run_dir}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayrl", description="Asynchronous off-policy RL with "
                                     "rollout workers anywhere.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser("train", help="train with local workers (the embedded default)",
                           description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(train)
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .checkpoint import CheckpointError
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, ValueError, TypeError, TimeoutError) as exc:
        if args.verbose:
            raise
        print(f"relayrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relayrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``relayrl`` command line."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from .config import ConfigError, RunConfig, load_config, to_toml, with_overrides

TRAIN_HELP = """\
Train SAC with local rollout-worker processes (defaults: Pendulum-v1, 2 workers, 10 epochs of 5
rounds of 200 updates, about 10,000 environment steps). Shows progress, prints a statistics table
per round, writes stats.csv, stats.jsonl and TensorBoard events to the run directory (and to
Weights & Biases with --wandb PROJECT, the wandb extra), and checkpoints after every epoch. Running
the same command again resumes from the last checkpoint; Ctrl+C or SIGTERM saves, stops the workers
and exits (workers also exit by themselves if the trainer is killed outright). Precedence: defaults
< --config FILE < flags. Every setting, with its documentation, is a field of relayrl.config (print
them with --print-config)."""


TRAINER_HELP = """\
Train from remote rollout workers ('relayrl worker', any number, on any machine): the trainer of
'relayrl train' (same settings, run directory, checkpoints and resume) with no local workers. It
binds two addresses (buffers in, weights out) that workers dial, or with --connect-relay joins a
'relayrl relay'. Any address other than loopback needs CURVE keys (--keys DIR, made by 'relayrl
keys') or an explicit --insecure. Prints every few seconds who is connected, samples per second, the
policy version and each worker's policy lag; Ctrl+C or SIGTERM saves a checkpoint and exits."""

WORKER_HELP = """\
Run one rollout worker that dials out to a trainer (or, with --via-relay keys, a relay): it runs
episodes with the newest policy and sends their transitions. It builds the trainer's actor, so give
it the trainer's --config (sac.hidden_sizes) and --env. Prints its samples per second and the policy
version it runs; Ctrl+C or SIGTERM stops it cleanly."""

RELAY_HELP = """\
Forward buffers from workers to a trainer and weights back, for a trainer that cannot accept
connections: workers connect to the worker ports, the trainer ('relayrl trainer --connect-relay
HOST') to the trainer ports. Payloads are never decoded. Prints its connections and what it
forwarded every few seconds."""

KEYS_HELP = """\
Create CURVE keys: the trainer's pair (DIR/trainer.key_secret; DIR/trainer.key is its public half),
one pair per worker (DIR/workers/NAME.key_secret) with its public key authorized in
DIR/authorized_workers/, and with --relay the relay's pair (DIR/relay.key_secret, DIR/relay.key).
Existing keys are kept, so run it again with new names to add workers. Revoke a worker by deleting
its file in authorized_workers/."""


PLOT_HELP = """\
Draw learning curves: the mean return of each round's test episodes (deterministic policy, solid)
and training episodes (dashed) against environment steps (total_samples) and, in a second panel,
against wall-clock time (round_time summed), from each run's stats.jsonl (stats.csv if there is
none). Several runs are overlaid, the legend naming each directory; runs whose config.json files
differ only in seed and run_dir are seeds of one configuration, drawn as their mean with a min-max
band. Writes RUN_DIR/learning_curve.png for one run, ./learning_curves.png for several (-o to
choose). Needs matplotlib (.venv/bin/pip install matplotlib; scripts/setup.sh installs it)."""

EVAL_HELP = """\
Evaluate a run's latest saved policy: loads RUN_DIR/config.json (environment, algorithm, settings)
and the weights the trainer saved last (RUN_DIR/actor.npz, written with every checkpoint; the
newest checkpoint's if actor.npz is missing or older), runs N deterministic episodes (episode i
reset with seed S + i) and prints the mean +- std, min and max of their return and length.
--video DIR records the episodes as MP4 files (needs an environment that renders rgb_array frames
and moviepy)."""

# --- run flags, generated from the configuration dataclasses ------------------------------------
# Every field of RunConfig and of its tables is a flag: top-level fields as --name (--run-dir),
# table fields as --table.name (--training.epochs, --workers.env-steps-per-update, --sac.lr-actor);
# the help is the field's docstring and the values are validated once, by the dataclasses. A few
# short aliases stay for the settings changed most often; they resolve to the same fields.
RUN_ALIASES = {"epochs": "training.epochs", "rounds": "training.rounds", "steps": "training.steps",
               "device": "training.device", "start-training": "training.start_training",
               "profiling": "training.profiling", "wandb": "wandb_project"}
LOCAL_ALIASES = {"workers": "workers.count"}
WORKER_FIELDS = ("env", "algorithm")
WORKER_ALIASES = {"max-samples-per-episode": "workers.max_samples_per_episode",
                  "test-episode-interval": "workers.test_episode_interval",
                  "buffer-steps": "workers.buffer_steps", "pause-mid-episode": "workers.pause_mid_episode"}  # what a worker takes from the run's settings, besides [workers]
_DEST = "config:"


def field_docs(cls) -> dict[str, str]:
    """The docstrings under a dataclass's fields (read from its source), as one-line texts."""
    import ast
    import inspect
    import textwrap
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _converter(annotation: str, flag: str):
    """Text -> value for a field annotated ``annotation`` (a string: the modules use postponed
    annotations). The dataclass validates the value afterwards."""
    optional = "None" in annotation
    base = annotation.replace("| None", "").replace("None |", "").strip()

    def convert(text: str):
        if optional and text.lower() == "none":
            return "none"  # the configuration reads "none" as None (a None override means "not given")
        if base == "bool":
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{flag} takes true, false or none, got {text!r}")
        try:
            if base.startswith("tuple[") or base.startswith("list["):
                item = float if "float" in base else int
                return tuple(item(part) for part in text.replace(" ", "").split(",") if part)
            if base == "int":
                return int(text)
            if base == "float":
                return float(text)
        except ValueError:
            kind = "numbers" if base != "int" else "an integer"
            if base.startswith(("tuple[", "list[")):
                kind = "values separated by commas (e.g. 256,256)"
            raise argparse.ArgumentTypeError(f"{flag} takes {kind}, got {text!r}") from None
        return text

    convert.__name__ = base  # argparse names the type in its messages
    return convert


def _metavar(annotation: str) -> str:
    base = annotation.replace("| None", "").strip()
    meta = {"int": "N", "float": "X", "str": "TEXT", "bool": "true|false"}.get(base, "A,B" if base.startswith("tuple") else "V")
    return meta + ("|none" if "None" in annotation else "")


def _add_field(group, flags: list[str], dotted: str, f: dataclasses.Field, doc: str, default) -> None:
    dest = _DEST + dotted
    shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    doc = f"{doc} (default: {'none' if shown is None else shown})".replace("%", "%%")
    annotation = str(f.type)
    if annotation == "bool":
        group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=doc)
    else:
        group.add_argument(*flags, dest=dest, type=_converter(annotation, flags[0]), default=argparse.SUPPRESS,
                           metavar=_metavar(annotation), help=doc)


def add_config_flags(parser: argparse.ArgumentParser, aliases: dict[str, str], *,
                     top: tuple[str, ...] | None = None, tables: tuple[str, ...] | None = None) -> None:
    """Add a flag for every setting (or for the ``top`` fields and ``tables`` given)."""
    from .algorithms import REGISTRY
    from .config import SECTIONS, RunConfig

    defaults = RunConfig().to_dict()
    for name, spec in REGISTRY.items():
        defaults.setdefault(name, dataclasses.asdict(spec.settings()))
    reverse: dict[str, list[str]] = {}
    for alias, dotted in aliases.items():
        reverse.setdefault(dotted, []).append("--" + alias)
    run_docs = field_docs(RunConfig)
    group = parser.add_argument_group("settings (defaults < --config FILE < these flags)")
    for f in dataclasses.fields(RunConfig):
        if f.name == "agent" or f.name in SECTIONS or (top is not None and f.name not in top):
            continue
        flag = "--" + f.name.replace("_", "-")
        _add_field(group, [flag] + reverse.get(f.name, []), f.name, f, run_docs.get(f.name, ""),
                   defaults[f.name])
    sections = dict(SECTIONS)
    sections.update({name: spec.config for name, spec in REGISTRY.items()})
    for table, cls in sections.items():
        if tables is not None and table not in tables and table not in REGISTRY:
            continue
        docs = field_docs(cls)
        title = (f"[{table}] settings ({REGISTRY[table].summary})" if table in REGISTRY
                 else f"[{table}] settings")
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            dotted = f"{table}.{f.name}"
            flags = ["--" + dotted.replace("_", "-")] + reverse.get(dotted, [])
            _add_field(group, flags, dotted, f, docs.get(f.name, ""), defaults[table][f.name])
    unknown = sorted(set(aliases.values()) - set(_known_dotted(sections, RunConfig)))
    if unknown:  # an alias that names no field is a bug here, not a user error
        raise AssertionError(f"flag aliases name no setting: {unknown}")


def _known_dotted(sections: dict, run_cls) -> list[str]:
    names = [f.name for f in dataclasses.fields(run_cls)]
    return names + [f"{table}.{f.name}" for table, cls in sections.items() for f in dataclasses.fields(cls)]


def config_overrides(args: argparse.Namespace) -> dict:
    """The settings given on the command line, as dotted overrides."""
    return {key[len(_DEST):]: value for key, value in vars(args).items() if key.startswith(_DEST)}


def build_config(args: argparse.Namespace) -> RunConfig:
    """Defaults < ``--config FILE`` < flags."""
    config = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    return with_overrides(config, **config_overrides(args))


def _add_run_flags(parser: argparse.ArgumentParser, local_workers: bool = True,
                   extra_aliases: dict[str, str] | None = None) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings (see README)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="no per-round tables")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resulting configuration as TOML (a file --config reads back) and exit")
    add_config_flags(parser, {**RUN_ALIASES, **(LOCAL_ALIASES if local_workers else {}), **(extra_aliases or {})})


def _print_config(config: RunConfig, role: str = "train") -> None:
    """The configuration as a TOML file that ``--config`` reads back (a derived run_dir as a comment)."""
    print(to_toml(config, role=role), end="")


def cmd_train(args: argparse.Namespace) -> int:
    from .roles.local_run import run_local
    config = build_config(args)
    if args.print_config:
        _print_config(config, "train")
        return 0
    config = config.with_run_dir("train")  # runs/<env> unless --run-dir
    rows = run_local(config, progress=not args.no_progress, print_tables=not args.quiet)
    if rows:
        print(done_line(rows, config.run_dir))
    return 0


def done_line(rows, run_dir: str, episodes: int = 5) -> str:
    """The closing line of a run: counters, and the mean return of the latest ``episodes`` test
    episodes (from the latest rounds that finished any; the last round alone often has none)."""
    last = rows[-1]
    total, count, first_round = 0.0, 0, None
    for row in reversed(rows):
        n = int(row.get("episodes_test", 0) or 0)
        ret = row.get("return_test")
        if n > 0 and ret == ret:  # not NaN
            total, count = total + float(ret) * n, count + n
            first_round = row
            if count >= episodes:
                break
    if count:
        where = f"epoch {int(first_round['epoch'])}, round {int(first_round['round'])}"
        returns = f"mean test return {total / count:.1f} over the latest {count} test episodes (since {where})"
    else:
        returns = "no test episode finished"
    return (f"done: {int(last['total_samples'])} env steps, {int(last['total_updates'])} updates; "
            f"{returns}; run directory {run_dir}")


def cmd_trainer(args: argparse.Namespace) -> int:
    from .roles.remote_trainer import plan_trainer, run_trainer
    if args.no_rate_limit and "config:workers.env_steps_per_update" in vars(args):
        raise ValueError("--env-steps-per-update and --no-rate-limit exclude each other")
    if args.no_rate_limit:
        setattr(args, "config:workers.env_steps_per_update", "none")
    config = build_config(args)
    if args.print_config:
        _print_config(config, "trainer")
        return 0
    config = config.with_run_dir("trainer")  # runs/<env>-trainer unless --run-dir
    plan = plan_trainer(args)  # addresses and keys are checked before anything heavy is built
    rows = run_trainer(config, plan, progress=not args.no_progress, print_tables=not args.quiet,
                       status_interval=args.status_interval)
    if rows:
        print(done_line(rows, config.run_dir), flush=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .roles.remote_worker import plan_worker, run_worker
    config = build_config(args)
    plan = plan_worker(args)
    run_worker(config, plan, seed=args.seed, status_interval=args.status_interval)
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    from .roles.relay_server import plan_relay, run_relay
    run_relay(plan_relay(args), status_interval=args.status_interval, duration=args.duration)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .roles.key_setup import git_warnings, make_keys
    lines = make_keys(args.dir, args.workers, relay=args.relay)
    for line in git_warnings(args.dir):  # keys inside a git work tree
        print(line, file=sys.stderr)
    for line in lines:
        print(line)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_runs
    path, drawn = plot_runs(args.run_dirs, args.output)
    runs = sum(len(curve.run_dirs) for curve in drawn)
    print(f"wrote {path} ({runs} run{'s' if runs != 1 else ''}, {len(drawn)} "
          f"curve{'s' if len(drawn) != 1 else ''})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    result = evaluate(args.run_dir, episodes=args.episodes, seed=args.seed, video_dir=args.video,
                      torch_threads=1)
    print(result.summary())
    return 0


def _int_at_least(minimum: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    convert.__name__ = "int"
    return convert

def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_trainer_parser(sub) -> None:
    from .roles.common import (DEFAULT_BUFFER_PORT, DEFAULT_RELAY_TRAINER_BUFFER_PORT, DEFAULT_STATUS_INTERVAL,
                        DEFAULT_WEIGHTS_PORT)
    p = sub.add_parser("trainer", help="train from remote workers (binds, or joins a relay)",
                       description=TRAINER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(p, local_workers=False, extra_aliases={"env-steps-per-update": "workers.env_steps_per_update"})
    net = p.add_argument_group("network")
    net.add_argument("--bind-buffers", metavar="tcp://HOST:PORT",
                     help=f"where workers send buffers (default tcp://127.0.0.1:{DEFAULT_BUFFER_PORT}; "
                          f"tcp://0.0.0.0:{DEFAULT_BUFFER_PORT} for every interface)")
    net.add_argument("--bind-weights", metavar="tcp://HOST:PORT",
                     help=f"where workers get weights (default tcp://127.0.0.1:{DEFAULT_WEIGHTS_PORT})")
    net.add_argument("--connect-relay", metavar="HOST[:PORT]",
                     help="join a 'relayrl relay' at HOST instead of binding")
    net.add_argument("--relay-buffer-port", type=int, metavar="PORT",
                     help=f"the relay's trainer buffer port (default {DEFAULT_RELAY_TRAINER_BUFFER_PORT})")
    net.add_argument("--relay-weights-port", type=int, metavar="PORT",
                     help="the relay's trainer weights port (default: buffer port + 1)")
    net.add_argument("--keys", metavar="DIR", help="CURVE keys made by 'relayrl keys': uses "
                     "DIR/trainer.key_secret and DIR/authorized_workers/ (with --connect-relay: DIR/relay.key)")
    net.add_argument("--insecure", action="store_true",
                     help="allow plaintext on a non-loopback address (a network you trust completely)")
    net.add_argument("--no-rate-limit", action="store_true",
                     help="never meter the workers (real-time environments)")
    net.add_argument("--status-interval", type=_positive_float, default=DEFAULT_STATUS_INTERVAL,
                     metavar="S", help=f"seconds between status reports (default {DEFAULT_STATUS_INTERVAL:g})")
    p.set_defaults(func=cmd_trainer)


def _add_worker_parser(sub) -> None:
    from .roles.common import DEFAULT_BUFFER_PORT, DEFAULT_STATUS_INTERVAL
    p = sub.add_parser("worker", help="run a rollout worker that connects to a trainer or relay",
                       description=WORKER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", required=True, metavar="HOST[:PORT]",
                   help="the trainer's (or relay's) host; PORT sets --buffer-port")
    p.add_argument("--buffer-port", type=int, metavar="PORT", help=f"default {DEFAULT_BUFFER_PORT}")
    p.add_argument("--weights-port", type=int, metavar="PORT", help="default: buffer port + 1")
    p.add_argument("--config", metavar="FILE", help="the trainer's TOML file (algorithm and actor "
                   "architecture, env, [workers] settings); default settings otherwise")
    p.add_argument("--name", metavar="NAME", help="this worker's id (default HOSTNAME-PID); with --keys "
                   "its key pair is KEYS_DIR/workers/NAME.key_secret")
    p.add_argument("--keys", metavar="DIR", help="CURVE keys: DIR/trainer.key (DIR/relay.key with "
                   "--via-relay) and DIR/workers/NAME.key_secret")
    p.add_argument("--via-relay", action="store_true", help="the host is a relay: use DIR/relay.key")
    p.add_argument("--key", metavar="FILE", help="this worker's .key_secret file (instead of --keys/--name)")
    p.add_argument("--server-key", metavar="FILE", help="the trainer's or relay's public .key file")
    p.add_argument("--insecure", action="store_true",
                   help="allow plaintext to a non-loopback address (a network you trust completely)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the environment and the policy noise "
                   "(default: random)")
    p.add_argument("--status-interval", type=_positive_float, default=DEFAULT_STATUS_INTERVAL, metavar="S",
                   help=f"seconds between status lines (default {DEFAULT_STATUS_INTERVAL:g})")
    add_config_flags(p, WORKER_ALIASES, top=WORKER_FIELDS, tables=("workers",))
    p.set_defaults(func=cmd_worker)


def _add_relay_parser(sub) -> None:
    from .roles.common import (DEFAULT_BUFFER_PORT, DEFAULT_RELAY_TRAINER_BUFFER_PORT,
                        DEFAULT_RELAY_TRAINER_WEIGHTS_PORT, DEFAULT_STATUS_INTERVAL, DEFAULT_WEIGHTS_PORT)
    p = sub.add_parser("relay", help="forward between workers and a trainer that cannot accept connections",
                       description=RELAY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", default="127.0.0.1", metavar="HOST",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--worker-buffer-port", type=int, default=DEFAULT_BUFFER_PORT, metavar="PORT",
                   help=f"workers send buffers here (default {DEFAULT_BUFFER_PORT})")
    p.add_argument("--worker-weights-port", type=int, default=DEFAULT_WEIGHTS_PORT, metavar="PORT",
                   help=f"workers get weights here (default {DEFAULT_WEIGHTS_PORT})")
    p.add_argument("--trainer-buffer-port", type=int, default=DEFAULT_RELAY_TRAINER_BUFFER_PORT, metavar="PORT",
                   help=f"the trainer gets buffers here (default {DEFAULT_RELAY_TRAINER_BUFFER_PORT})")
    p.add_argument("--trainer-weights-port", type=int, default=DEFAULT_RELAY_TRAINER_WEIGHTS_PORT,
                   metavar="PORT", help=f"the trainer sends weights here (default {DEFAULT_RELAY_TRAINER_WEIGHTS_PORT})")
    p.add_argument("--keys", metavar="DIR", help="CURVE keys made by 'relayrl keys --relay': uses "
                   "DIR/relay.key_secret, DIR/authorized_workers/ and DIR/trainer.key")
    p.add_argument("--insecure", action="store_true",
                   help="allow plaintext on a non-loopback address (a network you trust completely)")
    p.add_argument("--status-interval", type=_positive_float, default=DEFAULT_STATUS_INTERVAL, metavar="S",
                   help=f"seconds between status lines (default {DEFAULT_STATUS_INTERVAL:g})")
    p.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds (default: never)")
    p.set_defaults(func=cmd_relay)


def _add_keys_parser(sub) -> None:
    p = sub.add_parser("keys", help="create CURVE keys for the trainer, workers and relay",
                       description=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="keys directory (created if missing)")
    p.add_argument("--workers", nargs="+", default=["worker-0"], metavar="NAME",
                   help="worker names, one key pair each (default worker-0)")
    p.add_argument("--relay", action="store_true", help="also create the relay's key pair")
    p.set_defaults(func=cmd_keys)


def _add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw the learning curves of runs (return against env steps and time)",
                       description=PLOT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (their --run-dir)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="the picture to write (default: "
                   "RUN_DIR/learning_curve.png for one run, ./learning_curves.png for several)")
    p.set_defaults(func=cmd_plot)


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="run a run's latest policy for deterministic episodes and print the return",
                       description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (its --run-dir)")
    p.add_argument("--episodes", type=_int_at_least(1), default=10, metavar="N",
                   help="episodes to run (default 10)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="S",
                   help="episode i resets the environment with seed S + i (default 0)")
    p.add_argument("--video", metavar="DIR", help="record the episodes as MP4 files in DIR (needs moviepy "
                   "and an environment that renders rgb_array frames)")
    p.set_defaults(func=cmd_eval)

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayrl", description="Asynchronous off-policy RL with "
                                     "rollout workers anywhere.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser("train", help="train with local workers (the embedded default)",
                           description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(train)
    train.set_defaults(func=cmd_train)
    _add_trainer_parser(sub)
    _add_worker_parser(sub)
    _add_relay_parser(sub)
    _add_keys_parser(sub)
    _add_plot_parser(sub)
    _add_eval_parser(sub)
    return parser


def _user_error(exc: BaseException) -> bool:
    """Errors reported as one line: bad settings, files, addresses, checkpoints (the checkpoint
    module is looked up only if it was loaded, so that errors before any run import no torch)."""
    if isinstance(exc, (ConfigError, ValueError, TypeError, TimeoutError, OSError)):
        return True
    checkpoint = sys.modules.get("relayrl.checkpoint")
    return checkpoint is not None and isinstance(exc, checkpoint.CheckpointError)


def _algorithm_from_path(argv: list[str]) -> None:
    """``--algorithm package.module:NAME`` names an algorithm outside the registry: load it before
    the flags are made, so its table's flags (``--NAME.field``) exist too."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--algorithm" and i + 1 < len(argv) else (
            arg.partition("=")[2] if arg.startswith("--algorithm=") else None)
        if value and ":" in value:
            from .algorithms import REGISTRY, get_algorithm
            spec = get_algorithm(value)  # ValueError with the fix if it cannot be loaded
            REGISTRY.setdefault(spec.name, spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _algorithm_from_path(argv)
    except ValueError as exc:
        print(f"relayrl: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except Exception as exc:
        if args.verbose or not _user_error(exc):
            raise
        message = " ".join(str(exc).split())  # one line, whatever the message
        print(f"relayrl: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relayrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

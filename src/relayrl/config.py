"""Typed configuration of a run, with a docstring per field and validation that names the fix.

A run is described by :class:`RunConfig`; its sections map to the TOML file's tables::

    env = "Pendulum-v1"
    seed = 0

    [training]       # TrainingOffline's knobs
    epochs = 10

    [memory]
    batch_size = 256

    [workers]
    count = 2

    algorithm = "sac"  # a name in relayrl.algorithms.REGISTRY, or "package.module:ALGORITHM"
    [sac]            # the chosen algorithm's settings, under its name
    lr_actor = 3e-4

Precedence: defaults < the ``--config`` file < command-line flags.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import checks
from .algorithms import DEFAULT_ALGORITHM, Algorithm, get_algorithm


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message says which and how to fix it."""


@contextlib.contextmanager
def _as_config_error():
    """The shared checks (relayrl.checks) raise ValueError; the configuration says ConfigError."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class TrainingConfig:
    """The ``TrainingOffline`` parameters (see its documentation)."""

    epochs: int = 10
    """Epochs in the run; a checkpoint is written after each."""
    rounds: int = 5
    """Rounds per epoch; one statistics row per round."""
    steps: int = 200
    """Training steps (updates) per round."""
    update_model_interval: int = 20
    """Updates between two broadcasts of the actor to the workers."""
    update_buffer_interval: int = 20
    """Updates between two pulls of new samples into the memory."""
    max_training_steps_per_env_step: float = 1.0
    """Update-to-data cap: training waits while total_updates / total_samples exceeds it."""
    sleep_between_buffer_retrieval_attempts: float = 0.1
    """Seconds, upper bound of one wait for samples (the wait ends early when samples arrive)."""
    profiling: bool = False
    """Profile each epoch with pyinstrument and log the report."""
    start_training: int = 256
    """No update before the memory holds this many transitions (and never before one batch)."""
    ratio_from_start: bool = False
    """Count the update-to-data cap from ``start_training`` on: updates wait while
    ``total_updates > max_training_steps_per_env_step * (total_samples - start_training)``, so
    training starts at one update per new sample (Stable-Baselines3's ``learning_starts``); turn
    it on with a large warm-up (the MuJoCo recipe: ``--start-training 10000``). False (the
    default): tmrl's counting over all samples (``TrainingOffline``'s own), where the warm-up
    samples are trained on at once: with the default 256 that looks like a head start (Pendulum-v1
    end to end, one run each: a median of 4,116 steps to -200 with it on, 3,060 off; runs differ by
    about 1,000 steps), with 10,000 it is 10,000 updates on the
    first 10,000 samples before any new one arrives, which cost relayrl's SAC a third of its
    HalfCheetah return."""
    device: str | None = None
    """Torch device of the agent and the batches; None picks CUDA, else MPS, else CPU."""
    prefetch: bool | None = None
    """Draw the next batch in a background thread while the current update trains (see
    ``TrainingOffline.prefetch``). Omitted (None): automatic, on for CUDA and when a CPU core is
    free for the thread; off for other accelerators and when training keeps every core busy."""
    torch_threads: int = 0
    """Threads for the trainer's torch operations; 0 means automatic: one core is left to the
    workers, the transport and the OS (torch's threads spin-wait at every operation, and when
    another process took one of their cores a 2-thread update on 2 cores was measured 8x slower or
    worse), and with SAC's parallel update (two threads, one per step) each thread gets half of the
    remaining cores, at least 1. On 2 cores: 1 (per side with the parallel update, which then keeps
    both cores busy)."""

    def __post_init__(self) -> None:
        with _as_config_error():
            for name in ("epochs", "rounds", "steps", "update_model_interval", "update_buffer_interval"):
                checks.positive_int(f"training.{name}", getattr(self, name))
            checks.positive_number("training.max_training_steps_per_env_step",
                                   self.max_training_steps_per_env_step,
                                   " (updates allowed per received sample; inf for no cap)", allow_inf=True)
            checks.seconds("training.sleep_between_buffer_retrieval_attempts",
                           self.sleep_between_buffer_retrieval_attempts)
            checks.non_negative_int("training.start_training", self.start_training)
            checks.non_negative_int("training.torch_threads", self.torch_threads)
        _check(isinstance(self.ratio_from_start, bool),
               f"training.ratio_from_start must be true or false, got {self.ratio_from_start!r}")
        _check(self.prefetch is None or isinstance(self.prefetch, bool),
               f"training.prefetch must be true or false (or omitted: automatic), got {self.prefetch!r}")


@dataclass
class MemoryConfig:
    """The default replay memory."""

    capacity: int = 1_000_000
    """Transitions kept; the oldest are overwritten first."""
    batch_size: int = 256
    """Transitions per training batch."""
    n_step: int = 1
    """Returns over this many steps: each stored transition holds the discounted sum of up to
    ``n_step`` rewards of one worker's stream and the observation it bootstraps from, never across
    an episode end or from one worker to another (a window cut short by a time limit or a lost
    buffer bootstraps from where it stops, with the matching discount). 1: plain transitions."""
    prioritized: bool = False
    """Prioritized replay (Schaul et al., 2016): transitions drawn with probability proportional to
    ``|TD error| ** priority_exponent``, each batch carrying importance weights the agent applies."""
    priority_exponent: float = 0.6
    """How strongly priorities skew the draws (0: uniform); used when ``prioritized``."""
    importance_exponent: float = 0.4
    """Exponent of the importance weights ``(N * P(i)) ** -importance_exponent`` (normalised by
    their maximum; 1 corrects the skew fully); used when ``prioritized``."""

    def __post_init__(self) -> None:
        with _as_config_error():
            checks.positive_int("memory.batch_size", self.batch_size)
            checks.positive_int("memory.n_step", self.n_step)
        _check(isinstance(self.prioritized, bool),
               f"memory.prioritized must be true or false, got {self.prioritized!r}")
        for name in ("priority_exponent", "importance_exponent"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1,
                   f"memory.{name} must be a number in [0, 1], got {value!r}")
            checks.capacity_fits_batch("memory.capacity", self.capacity, "memory.batch_size", self.batch_size)


@dataclass
class WorkersConfig:
    """The rollout workers started by ``relayrl train`` (and the defaults of ``relayrl worker``)."""

    count: int = 2
    """Worker processes started on this machine."""
    max_samples_per_episode: int | None = None
    """Cap on steps per episode (a capped episode ends as truncated); None: the env's own limit."""
    test_episode_interval: int = 5
    """One deterministic test episode after every this many training episodes (0: never)."""
    buffer_steps: int = 25
    """Steps collected before a buffer is sent (episode ends always send)."""
    env_steps_per_update: float | None = 1.0
    """Worker-side rate limit: samples the trainer lets workers collect per update; the workers'
    allowance is the start_training samples + updates x this + slack_samples with
    ``training.ratio_from_start`` (else max(the start_training samples, updates x this) +
    slack_samples); None: unlimited, for real-time environments that must never wait."""
    slack_samples: int = 100
    """Samples workers may run ahead of the rate limit, so the trainer rarely waits. Once training
    has used the first samples, this is how far the data leads the updates: the less lead, the
    fewer environment steps for the same number of updates (in the end-to-end benchmark, 100
    reached a Pendulum-v1 return of -200 after a median of 3,060 steps over 3 seeds, 200 after
    5,161: a noisy measure). Raise it for workers on slow, distant links."""
    pause_mid_episode: bool = True
    """Whether the rate limit may pause a worker inside an episode (False for robots and games)."""
    random_steps: int = 0
    """Environment steps of the run taken with uniform random actions (``action_space.sample()``)
    before the policy acts, as Stable-Baselines3 does for its ``learning_starts`` steps; shared
    equally among the workers one command starts, and not repeated for the samples a resumed run
    already has. Test episodes always use the policy. Usually ``training.start_training``."""

    def __post_init__(self) -> None:
        _check(isinstance(self.count, int) and self.count >= 0,
               f"workers.count must be an integer >= 0, got {self.count!r}")
        _check(self.max_samples_per_episode is None or
               (isinstance(self.max_samples_per_episode, int) and self.max_samples_per_episode >= 1),
               f"workers.max_samples_per_episode must be a positive integer or omitted, got "
               f"{self.max_samples_per_episode!r}")
        _check(isinstance(self.test_episode_interval, int) and self.test_episode_interval >= 0,
               f"workers.test_episode_interval must be an integer >= 0, got {self.test_episode_interval!r}")
        _check(isinstance(self.buffer_steps, int) and self.buffer_steps >= 1,
               f"workers.buffer_steps must be a positive integer, got {self.buffer_steps!r}")
        _check(self.env_steps_per_update is None or
               (isinstance(self.env_steps_per_update, (int, float)) and self.env_steps_per_update > 0),
               f"workers.env_steps_per_update must be > 0 or omitted, got {self.env_steps_per_update!r}")
        _check(isinstance(self.slack_samples, int) and self.slack_samples >= 0,
               f"workers.slack_samples must be an integer >= 0, got {self.slack_samples!r}")
        _check(isinstance(self.random_steps, int) and not isinstance(self.random_steps, bool)
               and self.random_steps >= 0,
               f"workers.random_steps must be an integer >= 0, got {self.random_steps!r}")


#: The W&B modes ``wandb_mode`` may name, and the characters W&B refuses in project names.
WANDB_MODES = ("online", "offline", "disabled")
WANDB_FORBIDDEN = "/\\#?%:"


@dataclass
class RunConfig:
    """Everything ``relayrl train`` needs."""

    env: str = "Pendulum-v1"
    """Gymnasium environment id, or "package.module:factory" for an environment of your own (the
    algorithm says which spaces it can train on)."""
    algorithm: str = DEFAULT_ALGORITHM
    """The algorithm: a name in relayrl.algorithms.REGISTRY, or the "package.module:NAME" path of
    an Algorithm of your own. Its settings are the TOML table of the same name ([sac])."""
    seed: int = 0
    """Seeds torch, the memory's sampler and the workers (worker i uses seed + 1 + i)."""
    run_dir: str | None = None
    """Folder of checkpoints, statistics (CSV, JSONL) and TensorBoard events; rerunning the same
    command resumes from its latest checkpoint. Omitted: derived from the environment and the
    command, runs/<env> for relayrl train (runs/Pendulum-v1) and runs/<env>-trainer for relayrl
    trainer (a "module:factory" environment gives a file-system-safe name)."""
    keep_checkpoints: int = 3
    """Checkpoints kept in run_dir (the newest ones)."""
    wandb_project: str | None = None
    """Weights & Biases project that every statistics row is also logged to (at step total_samples,
    with the run's config.json as the W&B run's config); None: no W&B. Needs the wandb extra
    (pip install wandb). The W&B run id is kept in run_dir/wandb_run_id, so a resumed run goes on
    logging to the same W&B run; W&B's local files go to run_dir/wandb/ unless WANDB_DIR is set."""
    wandb_run_name: str | None = None
    """Display name of the W&B run; None: the run directory's name (Pendulum-v1)."""
    wandb_mode: str | None = None
    """W&B mode: "online", "offline" (the run stays in its local files; upload it later with
    wandb sync) or "disabled"; None: W&B's own choice (the WANDB_MODE environment variable, else
    online, which needs wandb login or WANDB_API_KEY)."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    agent: Any = None
    """The algorithm's settings: an instance of its config dataclass, the TOML table named after the
    algorithm. None: the algorithm's ``relayrl train`` defaults (``Algorithm.run_defaults`` over its
    dataclass defaults; for SAC the learning rates 1e-3, RL Baselines3 Zoo's value for
    Pendulum-v1, the default environment, instead of SB3's 3e-4)."""

    def __post_init__(self) -> None:
        _check(isinstance(self.env, str) and self.env != "", f"env must be a gymnasium id, got {self.env!r}")
        spec = self.algorithm_spec
        if self.agent is None:
            self.agent = _build_settings(spec, {}, f"[{spec.name}]")
        _check(isinstance(self.agent, spec.config),
               f"agent must be a {spec.config.__name__} for algorithm {self.algorithm!r}, got "
               f"{type(self.agent).__name__}")
        _check(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        _check(self.run_dir is None or (isinstance(self.run_dir, str) and self.run_dir.strip() != ""),
               f"run_dir must be a folder path (or omitted: derived from env), got {self.run_dir!r}")
        _check(isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1,
               f"keep_checkpoints must be an integer >= 1, got {self.keep_checkpoints!r}")
        project = self.wandb_project
        _check(project is None or (isinstance(project, str) and project.strip() != ""
                                   and not set(project) & set(WANDB_FORBIDDEN)),
               f"wandb_project must be a W&B project name, without any of {' '.join(WANDB_FORBIDDEN)} (or "
               f"omitted: no W&B), got {project!r}")
        _check(self.wandb_run_name is None or (isinstance(self.wandb_run_name, str)
                                               and self.wandb_run_name.strip() != ""),
               f"wandb_run_name must be a non-empty name (or omitted: the run directory's name), got "
               f"{self.wandb_run_name!r}")
        _check(self.wandb_mode is None or self.wandb_mode in WANDB_MODES,
               f"wandb_mode must be one of {', '.join(WANDB_MODES)} (or omitted: W&B's own choice), got "
               f"{self.wandb_mode!r}")
        with _as_config_error():
            checks.start_fits_capacity("training.start_training", self.training.start_training,
                                       "memory.capacity", self.memory.capacity)
        self._refuse_rate_deadlock()

    def _refuse_rate_deadlock(self) -> None:
        """Each side of rate control waits for the other: the trainer for samples (at most
        ``max_training_steps_per_env_step`` updates per sample), the workers for updates
        (``workers.env_steps_per_update`` samples per update). Unless their product is at least 1,
        both end up waiting forever after a few hundred updates."""
        rate, cap = self.workers.env_steps_per_update, self.training.max_training_steps_per_env_step
        if rate is None or cap == math.inf or rate * cap >= 1.0 - 1e-9:
            return
        raise ConfigError(
            f"these rate settings deadlock: workers.env_steps_per_update x "
            f"training.max_training_steps_per_env_step = {rate:g} x {cap:g} = {rate * cap:g} < 1, so the "
            f"workers wait for updates while the trainer waits for samples; make the product at least 1, "
            f"e.g. --workers.env-steps-per-update {1.0 / cap:g} (or --workers.env-steps-per-update none "
            f"for unmetered workers)")

    @property
    def algorithm_spec(self) -> Algorithm:
        """The registry entry of ``algorithm`` (ConfigError if there is none)."""
        try:
            return get_algorithm(self.algorithm)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data in the shape of the TOML file (the settings under the algorithm's name)."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "agent":
                data[self.algorithm_spec.name] = dataclasses.asdict(value)
            else:
                data[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return data

    def env_spaces(self) -> tuple[Any, Any]:
        """Build the environment once: ``(observation_space, action_space)``, with a clear
        ``ValueError`` for unknown ids and for spaces the algorithm cannot handle."""
        from .envs import env_spaces
        obs_space, act_space = env_spaces(self.env)
        try:
            self.algorithm_spec.validate_spaces(obs_space, act_space)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.env}: {exc}") from None
        return obs_space, act_space

    def with_run_dir(self, role: str = "train") -> "RunConfig":
        """This configuration with ``run_dir`` set: itself if it is set, else a copy with the
        default of ``role`` (:func:`default_run_dir`)."""
        if self.run_dir is not None:
            return self
        return dataclasses.replace(self, run_dir=default_run_dir(self.env, role))

    def actor_factory(self):
        """The callable ``(observation_space, action_space) -> ActorModule`` of this run's policy."""
        return self.algorithm_spec.make_actor_factory(self.agent)


SECTIONS = {"training": TrainingConfig, "memory": MemoryConfig, "workers": WorkersConfig}
"""The tables every run has; the algorithm's table is named after it."""

#: The run directory's suffix per command (``relayrl train``, ``relayrl trainer``), so that the
#: two never share a folder by default.
RUN_DIR_SUFFIXES = {"train": "", "trainer": "-trainer"}


def env_dir_name(env: str) -> str:
    """A file-system-safe folder name for an environment: a gymnasium id stays as it is
    (``Pendulum-v1``); anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``-``
    (``mypkg.envs:make_robot`` -> ``mypkg.envs-make_robot``, ``ALE/Pong-v5`` -> ``ALE-Pong-v5``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(env))
    name = re.sub(r"-{2,}", "-", name).strip("-.")[:100].rstrip("-.")
    return name or "env"


def default_run_dir(env: str, role: str = "train") -> str:
    """The run directory of ``env`` when none is given: ``runs/<env>`` for ``relayrl train``,
    ``runs/<env>-trainer`` for ``relayrl trainer``."""
    if role not in RUN_DIR_SUFFIXES:
        raise ValueError(f"role must be one of {sorted(RUN_DIR_SUFFIXES)}, got {role!r}")
    return f"runs/{env_dir_name(env)}{RUN_DIR_SUFFIXES[role]}"


def _optional(f: dataclasses.Field) -> bool:
    return "None" in str(f.type)


def _build(cls, values: dict[str, Any], where: str):
    """``cls(**values)`` with ConfigErrors naming ``where``. The string "none" stands for None in
    the fields that may be None (TOML has no null)."""
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields_by_name)
    values = {k: (None if isinstance(v, str) and v.lower() == "none" and k in fields_by_name
                  and _optional(fields_by_name[k]) else v) for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(names)}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _build_settings(spec: Algorithm, values: dict[str, Any], where: str):
    """The algorithm's settings: a table gives only the keys it changes, the rest keep the
    algorithm's ``relayrl train`` defaults."""
    return _build(spec.config, {**spec.run_defaults, **values}, where)


def config_from_dict(data: dict[str, Any], where: str = "configuration") -> RunConfig:
    """A validated :class:`RunConfig` from nested dicts (TOML tables, JSON from a checkpoint)."""
    algorithm = data.get("algorithm", DEFAULT_ALGORITHM)
    try:
        spec = get_algorithm(algorithm)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    top, sections = {}, {}
    for key, value in data.items():
        if key in SECTIONS or key == spec.name:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] in {where} must be a table, got {value!r}")
            if key == spec.name:
                sections["agent"] = _build_settings(spec, value, f"[{key}] of {where}")
            else:  # a table gives only the keys it changes: the rest keep RunConfig's defaults
                sections[key] = _build(SECTIONS[key], value, f"[{key}] of {where}")
        else:
            top[key] = value
    run_fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    top = {k: (None if isinstance(v, str) and v.lower() == "none" and k in run_fields
               and _optional(run_fields[k]) else v) for k, v in top.items()}
    names = {f.name for f in dataclasses.fields(RunConfig)} - set(SECTIONS) - {"agent"}
    unknown = sorted(set(top) - names)
    if unknown:
        hint = ""
        tables = [k for k in unknown if isinstance(top[k], dict)]
        if tables:
            hint = (f" (a table of algorithm settings must be named after the algorithm, "
                    f"[{spec.name}] here: set algorithm = {tables[0]!r} to use [{tables[0]}])")
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid top-level keys: {sorted(names)}"
                          f" and tables {sorted(SECTIONS) + [spec.name]}{hint}")
    return RunConfig(**top, **sections)


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML file into a :class:`RunConfig` with clear errors for unreadable files."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return config_from_dict(data, where=str(path))


def to_toml(config: RunConfig, role: str | None = None) -> str:
    """The configuration as a TOML file that :func:`load_config` reads back (unset optional
    values, which TOML cannot hold, are left out so they keep their automatic default). With
    ``role`` (``"train"``, ``"trainer"``), an unset ``run_dir`` is shown as a comment with the
    folder that command derives, so that the file keeps deriving it (for another env too)."""
    import tomli_w

    def clean(node, defaults):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out[key] = clean(value, defaults.get(key, {}))
            elif value is None:  # left out keeps a None default; "none" overrides another default
                if defaults.get(key) is not None:
                    out[key] = "none"
            else:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    defaults = RunConfig(algorithm=config.algorithm).to_dict()
    data = clean(config.to_dict(), defaults)
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    derived = ""
    if config.run_dir is None and role is not None:
        derived = (f'# run_dir = "{default_run_dir(config.env, role)}"  # derived from env by '
                   f"'relayrl {role}'; set run_dir to use another folder\n")
    return tomli_w.dumps(scalars) + derived + ("\n" + tomli_w.dumps(tables) if tables else "")


def with_overrides(config: RunConfig, **overrides: Any) -> RunConfig:
    """A copy of ``config`` with dotted overrides applied (``{"training.epochs": 3}``); None is skipped.
    Changing ``algorithm`` drops the previous algorithm's settings (the new one starts from its
    defaults, then the overrides for its table apply)."""
    data = config.to_dict()
    new_algorithm = overrides.get("algorithm")
    if new_algorithm is not None and new_algorithm != config.algorithm:
        data.pop(config.algorithm_spec.name, None)
        data["algorithm"] = new_algorithm
        try:
            data.setdefault(get_algorithm(new_algorithm).name, {})
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for dotted, value in overrides.items():
        if value is None or dotted == "algorithm":
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if part not in node:
                raise ConfigError(f"--{dotted}: no table [{part}] in this configuration (the algorithm's "
                                  f"table is [{config.algorithm_spec.name}] unless --algorithm changes it)")
            node = node[part]
        node[leaf] = value
    return config_from_dict(data)

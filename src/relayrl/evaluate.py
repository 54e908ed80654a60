"""``relayrl eval RUN_DIR``: run the latest saved policy of a run for a few deterministic episodes.

The run's ``config.json`` gives the environment, the algorithm and its settings (the actor is built
by the run's algorithm, ``RunConfig.actor_factory()``). The policy is the one the trainer saved last:

* ``RUN_DIR/actor.npz``: every save of the trainer (after each epoch, and on Ctrl+C or SIGTERM)
  writes the checkpoint and then this file, from the very actor the workers run. So it is always at
  least as new as the newest checkpoint, and it is read on its own (``np.load`` without pickle, a
  few arrays) while the checkpoint holds the whole replay memory too;
* the newest checkpoint's actor weights (read by :func:`relayrl.checkpoint.load_checkpoint`, which
  verifies every file and never unpickles), when ``actor.npz`` is missing or older than that
  checkpoint's manifest: a process killed between the two writes. The weights are the entry of the
  agent's saved state whose names and shapes are exactly the actor's. (A broken ``latest`` file or a
  corrupt checkpoint does not stop an evaluation that ``actor.npz`` can serve: it is used, with a
  warning.)

Episode ``i`` resets the environment with seed ``seed + i`` and acts with ``actor.act(obs,
test=True)`` (the deterministic action workers' test episodes take), capped at the run's
``workers.max_samples_per_episode`` like the workers' episodes, so two evaluations of one policy
print the same numbers. ``video_dir`` records every episode with gymnasium's ``RecordVideo`` (the
environment built with ``render_mode="rgb_array"``; writing the files needs moviepy).

torch is imported when a policy is built, never when this module is imported.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, config_from_dict

log = logging.getLogger("relayrl")

__all__ = ["EvalError", "EvalResult", "Policy", "evaluate", "load_run_config", "load_policy", "run_episodes",
           "DEFAULT_EPISODES"]

DEFAULT_EPISODES = 10


class EvalError(ValueError):
    """A run directory cannot be evaluated: the message names the problem and the fix."""


@dataclass
class Policy:
    actor: Any
    source: Path
    """``RUN_DIR/actor.npz``, or the checkpoint directory the weights were read from."""
    checkpoint: str | None
    """The name of the run's newest checkpoint (``epoch-000010``), if it has one."""


@dataclass
class EvalResult:
    run_dir: Path
    env: str
    algorithm: str
    policy: str
    checkpoint: str | None
    seed: int
    returns: list[float]
    lengths: list[int]
    videos: list[Path] = field(default_factory=list)
    video_dir: Path | None = None

    @staticmethod
    def _stats(values) -> tuple[float, float, float, float]:
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        return mean, std, min(values), max(values)

    @property
    def mean_return(self) -> float:
        return self._stats(self.returns)[0]

    def summary(self) -> str:
        """What ``relayrl eval`` prints: the run, the policy, return and length statistics."""
        n = len(self.returns)
        seeds = str(self.seed) if n == 1 else f"{self.seed}-{self.seed + n - 1}"
        saved = f" (newest checkpoint {self.checkpoint})" if self.checkpoint else ""
        lines = [f"{self.run_dir}: {n} deterministic episode{'s' if n != 1 else ''} of {self.env} "
                 f"(reset seeds {seeds}), {self.algorithm} policy from {self.policy}{saved}"]
        mean, std, low, high = self._stats(self.returns)
        lines.append(f"  return  mean {mean:.2f} ± {std:.2f} (std)   min {low:.2f}   max {high:.2f}")
        mean, std, low, high = self._stats(self.lengths)
        lines.append(f"  length  mean {mean:.1f} ± {std:.1f} (std)   min {low:.0f}   max {high:.0f}")
        if self.video_dir is not None:
            lines.append(f"  videos  {len(self.videos)} file{'s' if len(self.videos) != 1 else ''} in "
                         f"{self.video_dir}")
        return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------------------
def _run_dir(path: str | os.PathLike) -> Path:
    run_dir = Path(path)
    if not run_dir.exists():
        raise EvalError(f"no run directory at {run_dir}: give the --run-dir of a run (e.g. runs/Pendulum-v1)")
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is a file, not a run directory: give the directory that holds "
                        f"config.json and actor.npz (perhaps {run_dir.parent})")
    return run_dir


def load_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The :class:`RunConfig` the run was started with (``RUN_DIR/config.json``)."""
    run_dir = _run_dir(run_dir)
    path = run_dir / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalError(f"{run_dir} has no config.json: give the run directory of a run that has started "
                        "(the trainer writes config.json when it starts)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EvalError(f"{path} is not valid JSON ({exc}): restore it, or write it with 'relayrl train "
                        "--print-config' settings of the run") from None
    if not isinstance(data, dict):
        raise EvalError(f"{path} does not hold a configuration (a JSON object)")
    return config_from_dict(data, where=str(path))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _actor_weights(state: dict, actor, checkpoint: Path) -> dict:
    """The entry of a checkpoint's agent state that holds exactly the actor's weights."""
    import numpy as np

    own = actor.state_dict()
    agent = state.get("training", {}).get("agent") if isinstance(state.get("training"), dict) else None
    candidates = []
    if isinstance(agent, dict):
        candidates = [agent.get("actor")] + [v for k, v in agent.items() if k != "actor"]
    for entry in candidates:
        if (isinstance(entry, dict) and set(entry) == set(own)
                and all(tuple(getattr(entry[k], "shape", ())) == tuple(own[k].shape) for k in own)):
            return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in entry.items()}
    raise EvalError(f"the checkpoint {checkpoint} holds no weights of this run's actor "
                    f"({type(actor).__name__}, from config.json); was config.json changed? Restore it")


def load_policy(run_dir: str | os.PathLike, config: RunConfig, spaces: tuple) -> Policy:
    """The run's latest saved policy (see the module docstring for which file and why)."""
    from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    actor = config.actor_factory()(*spaces)
    npz = run_dir / "actor.npz"
    npz_time = _mtime(npz) if npz.is_file() else None
    try:
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
    except CheckpointError as exc:  # a broken ``latest`` file: actor.npz is enough
        if npz_time is None:
            raise
        log.warning("%s; evaluating %s", exc, npz)
        checkpoint = None
    checkpoint_time = _mtime(checkpoint / "manifest.json") if checkpoint is not None else None
    name = checkpoint.name if checkpoint is not None else None
    if checkpoint is not None and (npz_time is None or npz_time < checkpoint_time):
        try:
            state = load_checkpoint(checkpoint, mmap_mode="r")  # the replay memory is mapped, not read
        except CheckpointError as exc:
            if npz_time is None:
                raise
            log.warning("%s; evaluating the older %s", exc, npz)
        else:
            actor.load_weights(_actor_weights(state, actor, checkpoint))
            return Policy(actor, checkpoint, name)
    if npz_time is not None:
        actor.load(npz)  # ValueError naming the file if it does not fit the actor
        return Policy(actor, npz, name)
    raise EvalError(f"{run_dir} has no saved policy yet (no actor.npz, no checkpoint): the trainer saves "
                    "one at the end of every epoch and on Ctrl+C; evaluate it after its first epoch")


# --- episodes ----------------------------------------------------------------------------------------
def run_episodes(env, actor, episodes: int, seed: int = 0,
                 max_steps: int | None = None) -> tuple[list[float], list[int]]:
    """``episodes`` deterministic episodes, episode ``i`` reset with seed ``seed + i``; their returns
    and lengths. ``max_steps`` caps an episode's length (the run's ``max_samples_per_episode``)."""
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, length = 0.0, 0
        while True:
            obs, reward, terminated, truncated, _ = env.step(actor.act(obs, test=True))
            total += float(reward)
            length += 1
            if terminated or truncated or (max_steps is not None and length >= max_steps):
                break
        returns.append(total)
        lengths.append(length)
    return returns, lengths


def _video_env(config: RunConfig, video_dir: Path, seed: int):
    """The environment wrapped in ``RecordVideo``, or an :class:`EvalError` naming every missing piece."""
    from .envs import make_env, missing_dependency, pip_command

    problems = []
    try:
        import moviepy  # noqa: F401  (RecordVideo writes the files with it)
    except ImportError:
        problems.append(f"writing the videos needs moviepy, which is not installed: {pip_command()} install "
                        "moviepy")
    try:
        env = make_env(config.env, render_mode="rgb_array")
    except TypeError as exc:
        raise EvalError(f"--video: the environment {config.env!r} does not take render_mode ({exc}); its "
                        "factory must accept render_mode='rgb_array' to be recorded") from None
    try:
        env.reset(seed=seed)
        frame = env.render()
    except Exception as exc:  # gymnasium's DependencyNotInstalled (pygame...), or a broken renderer
        import gymnasium

        if isinstance(exc, (ImportError, gymnasium.error.DependencyNotInstalled)):
            text = missing_dependency(config.env, exc)  # the extra and the pip command of this Python
        else:
            text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        problems.insert(0, f"{config.env} cannot render frames here ({text})")
    else:
        if getattr(frame, "ndim", 0) != 3:
            problems.insert(0, f"{config.env} returns no image from render() with render_mode='rgb_array'")
    if problems:
        env.close()
        raise EvalError("--video: " + "; ".join(problems) + "; or evaluate without --video")
    from gymnasium.wrappers import RecordVideo

    return RecordVideo(env, str(video_dir), episode_trigger=lambda episode: True, name_prefix="eval",
                       disable_logger=True)


def evaluate(run_dir: str | os.PathLike, episodes: int = DEFAULT_EPISODES, seed: int = 0,
             video_dir: str | os.PathLike | None = None, torch_threads: int | None = None) -> EvalResult:
    """Run the latest saved policy of ``run_dir`` for ``episodes`` deterministic episodes (see the
    module docstring). ``torch_threads`` sets torch's thread count first (the command uses 1: one
    observation at a time gains nothing from more)."""
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
        raise EvalError(f"episodes must be a positive integer, got {episodes!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise EvalError(f"seed must be an integer >= 0, got {seed!r}")
    run_dir = _run_dir(run_dir)
    config = load_run_config(run_dir)
    spaces = config.env_spaces()  # a clear ValueError for an unknown environment
    env = _video_env(config, Path(video_dir), seed) if video_dir is not None else None
    try:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        torch.manual_seed(seed)
        policy = load_policy(run_dir, config, spaces)
        if env is None:
            from .envs import make_env
            env = make_env(config.env)
        returns, lengths = run_episodes(env, policy.actor, episodes, seed,
                                        max_steps=config.workers.max_samples_per_episode)
    finally:
        if env is not None:
            env.close()  # RecordVideo writes the last video here
    videos = sorted(Path(video_dir).glob("eval*.mp4")) if video_dir is not None else []
    return EvalResult(run_dir, config.env, config.algorithm, str(policy.source), policy.checkpoint, seed,
                      returns, lengths, videos, Path(video_dir) if video_dir is not None else None)

"""Environments: build one from a gymnasium id or a factory, and read its spaces.

``make_env`` takes a registered gymnasium id (``"Pendulum-v1"``), a ``"package.module:factory"``
string (a callable returning an environment, imported on use: for your own environments), or a
callable. ``env_spaces`` builds the environment once to read its spaces and closes it.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["make_env", "env_spaces", "load_object", "missing_dependency", "pip_command"]


def load_object(spec: str, what: str) -> Any:
    """``"package.module:attribute"`` -> the attribute, with a clear error naming ``what``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} {spec!r} is not of the form 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r} ({exc}); check the name and "
                         "that the module is on PYTHONPATH") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attribute!r}") from None


def make_env(env: str | Callable[[], Any], **kwargs):
    """A gymnasium environment from an id, a ``"module:factory"`` string or a factory.
    Unknown ids get a clear error, and so do registered ones whose dependencies are missing (the
    gymnasium extra and the pip command that installs it)."""
    if callable(env):
        return env(**kwargs)
    if ":" in env and not env.startswith(":"):
        module_part = env.partition(":")[0]
        if "/" not in module_part:  # gymnasium's own "module:EnvName-v0" ids contain no slash either,
            try:                     # so a factory is tried first and gymnasium's syntax after
                factory = load_object(env, "environment factory")
            except ValueError:
                factory = None
            if callable(factory):
                return factory(**kwargs)
    import gymnasium
    try:
        return gymnasium.make(env, **kwargs)
    except gymnasium.error.DependencyNotInstalled as exc:
        raise ValueError(missing_dependency(env, exc)) from exc
    except gymnasium.error.Error as exc:
        raise ValueError(f"unknown environment id {env!r} ({exc}); use a registered gymnasium id "
                         "such as 'Pendulum-v1', a 'module:factory' string, or pass a factory") from exc
    except ImportError as exc:  # registered, but its module (or one it imports) is not installed
        raise ValueError(missing_dependency(env, exc)) from exc


#: gymnasium's environment packages and the extra that installs what they need.
GYMNASIUM_EXTRAS = {"box2d": "box2d", "mujoco": "mujoco", "toy_text": "toy-text",
                    "classic_control": "classic-control", "phys2d": "jax", "tabular": "jax"}


def pip_command() -> str:
    """How to run pip for this Python: ``.venv/bin/pip`` in a virtual environment (relative to the
    working directory when it is below it), else ``<python> -m pip``."""
    if sys.prefix != sys.base_prefix:
        pip = Path(sys.executable).parent / ("pip.exe" if os.name == "nt" else "pip")
        if pip.exists():
            try:
                return str(pip.relative_to(Path.cwd()))
            except ValueError:
                return str(pip)
    return f"{sys.executable} -m pip"


def _entry_point(env: str) -> str:
    try:
        import gymnasium
        entry = gymnasium.spec(env).entry_point
    except Exception:  # not registered, or no spec to read
        return ""
    return entry if isinstance(entry, str) else getattr(entry, "__module__", "") or ""


def missing_dependency(env: str, exc: BaseException) -> str:
    """The message for an environment that is registered but cannot be built because something it
    needs is not installed: which gymnasium extra (or package) is missing, and the exact command
    that installs it into this Python."""
    text = " ".join(str(exc).split())
    found = re.search(r"gymnasium\[([A-Za-z0-9_-]+)\]", text)
    entry = _entry_point(env)
    package = re.match(r"gymnasium\.envs\.([A-Za-z0-9_]+)", entry)
    extra = found.group(1) if found else GYMNASIUM_EXTRAS.get(package.group(1)) if package else None
    if extra is not None:
        return (f"environment {env!r} needs gymnasium's {extra!r} extra, which is not installed in this "
                f"Python; install it with: {pip_command()} install \"gymnasium[{extra}]\"")
    name = (getattr(exc, "name", None) or entry.partition(":")[0]).split(".")[0]  # the top-level package
    fix = f"{pip_command()} install {name}" if name else f"{pip_command()} install <the package that provides it>"
    registered = "is registered but " if entry else ""
    return (f"environment {env!r} {registered}cannot be built: {text or type(exc).__name__}; install "
            f"what it needs into this Python, e.g. {fix}")


def env_spaces(env: str | Callable[[], Any]) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` of the environment, built once and closed."""
    instance = make_env(env)
    try:
        return instance.observation_space, instance.action_space
    finally:
        instance.close()

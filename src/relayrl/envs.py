"""Environments: build one from a gymnasium id or a factory, and read its spaces.

``make_env`` takes a registered gymnasium id (``"Pendulum-v1"``), a ``"package.module:factory"``
string (a callable returning an environment, imported on use: for your own environments), or a
callable. ``env_spaces`` builds the environment once to read its spaces and closes it.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["make_env", "env_spaces", "load_object"]


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
    Unknown ids get a clear error."""
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
    except gymnasium.error.Error as exc:
        raise ValueError(f"unknown environment id {env!r} ({exc}); use a registered gymnasium id "
                         "such as 'Pendulum-v1', a 'module:factory' string, or pass a factory") from exc


def env_spaces(env: str | Callable[[], Any]) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` of the environment, built once and closed."""
    instance = make_env(env)
    try:
        return instance.observation_space, instance.action_space
    finally:
        instance.close()

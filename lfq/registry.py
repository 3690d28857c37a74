"""Backend registry: names -> import strings, loaded only when asked for.

`import lfq` imports no framework; `lfq.get("torch")` imports torch then. A third
party registers its own backend with `lfq.register(name, "package.module:Class")`
and every tool here (the conformance suite, the CLI) can use it by name.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading

__all__ = ["BackendUnavailable", "framework", "get", "is_available", "list_backends", "register"]


class BackendUnavailable(ImportError):
    """A registered backend whose framework is not installed."""


# name -> (import string "module:attr", pip extra that installs its framework, module
# whose absence means "not installed").
_REGISTRY: dict[str, tuple[str, str | None, str | None]] = {
    "numpy": ("lfq.backends.numpy_backend:NumPyBackend", None, None),
    "torch": ("lfq.backends.torch_backend:TorchBackend", "torch", "torch"),
    "jax": ("lfq.backends.jax_backend:JaxBackend", "jax", "jax"),
    "tensorflow": ("lfq.backends.tf_backend:TensorFlowBackend", "tf", "tensorflow"),
}
_ALIASES = {"np": "numpy", "reference": "numpy", "pytorch": "torch", "tf": "tensorflow"}
_INSTANCES: dict[str, object] = {}
_LOCK = threading.Lock()


def register(name: str, target: str, *, extra: str | None = None, requires: str | None = None) -> None:
    """Register a backend class by import string; it is imported on first `get`.

    Args:
        name: registry name, e.g. "mybackend".
        target: "module.path:ClassName"; the class is instantiated without arguments.
        extra: pip extra (or package) to name when `requires` is missing.
        requires: top-level module whose absence means the framework is not installed.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name={name!r} must be a non-empty string")
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"target={target!r} must be an import string 'package.module:ClassName'")
    with _LOCK:
        _REGISTRY[name] = (target, extra, requires)
        _INSTANCES.pop(name, None)


def list_backends() -> list[str]:
    """Names of every registered backend, installed or not."""
    return sorted(_REGISTRY)


def _resolve(name: str) -> str:
    name = _ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backend {name!r}: known backends are {', '.join(list_backends())} "
            f"(aliases: {', '.join(f'{a}->{b}' for a, b in sorted(_ALIASES.items()))}); "
            "register your own with lfq.register(name, 'module:Class')"
        )
    return name


def framework(name: str) -> str | None:
    """The top-level module a registered backend needs (None for the reference)."""
    return _REGISTRY[_resolve(name)][2]


def is_available(name: str) -> bool:
    """Whether `get(name)` would succeed (its framework is installed)."""
    try:
        get(name)
    except BackendUnavailable:
        return False
    return True


def get(backend: str = "numpy"):
    """The backend instance registered under `backend` (default: the NumPy reference).

    Raises:
        ValueError: unknown name (the message lists the known ones).
        BackendUnavailable: its framework is not installed (the message names the pip extra).
    """
    name = _resolve(backend)
    with _LOCK:
        if name in _INSTANCES:
            return _INSTANCES[name]
        target, extra, requires = _REGISTRY[name]
    if requires is not None and importlib.util.find_spec(requires) is None:
        how = f"pip install 'lfq[{extra}]'" if extra else f"install {requires}"
        raise BackendUnavailable(
            f"backend {name!r} needs {requires}, which is not installed: {how}"
        )
    module_name, attr = target.split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    instance = cls()
    with _LOCK:
        return _INSTANCES.setdefault(name, instance)

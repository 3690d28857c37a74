"""Backend registry: names -> import strings, loaded only when asked for.

`import lfq` imports no framework; `lfq.get("torch")` imports torch then. A third
party registers its own backend with `lfq.register(name, "package.module:Class")`
and every tool here (the conformance suite, the CLI) can use it by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lfq.interface import LFQBackend

__all__ = [
    "BackendUnavailable",
    "StaticInfo",
    "framework",
    "get",
    "is_available",
    "list_backends",
    "register",
    "static_info",
    "unavailable_reason",
]


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


@dataclasses.dataclass(frozen=True)
class StaticInfo:
    """What is known about a built-in backend without importing it (`lfq info` lists these).

    Attributes:
        dtypes: its `dtypes`.
        modes: its `modes`.
        distributions: pip distributions that may provide its framework, tried in
            order for the version (TensorFlow installs as "tensorflow" or "tensorflow-cpu").
        float64_env: environment variable that adds "float64" to `dtypes` when true
            (JAX's 64-bit mode), or None.
    """

    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    distributions: tuple[str, ...] = ()
    float64_env: str | None = None
    bfloat16_module: str | None = None

    def current_dtypes(self) -> tuple[str, ...]:
        """`dtypes`, with float64 when `float64_env` is set to a true value, without
        bfloat16 when `bfloat16_module` (the package that provides it) is not installed."""
        dtypes = self.dtypes
        if self.bfloat16_module and importlib.util.find_spec(self.bfloat16_module) is None:
            dtypes = tuple(d for d in dtypes if d != "bfloat16")
        if self.float64_env and os.environ.get(self.float64_env, "").strip().lower() in _TRUE:
            return dtypes + ("float64",)
        return dtypes


_TRUE = ("1", "y", "yes", "t", "true", "on")
_ALL = ("float16", "bfloat16", "float32", "float64")
#: The built-in backends' metadata, kept equal to their classes' attributes (tests/test_cli.py checks).
#: A name registered anew with `register` has none: its class is the only source then.
_STATIC: dict[str, StaticInfo] = {
    "numpy": StaticInfo(_ALL, ("eager",), bfloat16_module="ml_dtypes"),
    "torch": StaticInfo(_ALL, ("eager", "compiled"), ("torch",)),
    "jax": StaticInfo(_ALL[:3], ("eager", "compiled"), ("jax",), float64_env="JAX_ENABLE_X64"),
    "tensorflow": StaticInfo(
        _ALL,
        ("eager", "compiled"),
        ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly", "tf-nightly-cpu"),
    ),
}
_ALIASES = {"np": "numpy", "reference": "numpy", "pytorch": "torch", "tf": "tensorflow"}
_INSTANCES: dict[str, LFQBackend] = {}
_LOCK = threading.Lock()


def register(name: str, target: str, *, extra: str | None = None, requires: str | None = None) -> None:
    """Register a backend class by import string; it is imported on first `get`.

    Importing runs the module's code (as any `import` does), so register only
    modules you trust; `lfq conformance --register` and `lfq info --register`
    import it at once.

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
        _STATIC.pop(name, None)


def list_backends() -> list[str]:
    """Names of every registered backend, installed or not."""
    return sorted(_REGISTRY)


def _resolve(name: object) -> str:
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


def static_info(name: str) -> StaticInfo | None:
    """The built-in backend's dtypes and modes without importing it; None for a registered one."""
    return _STATIC.get(_resolve(name))


def unavailable_reason(name: str) -> str | None:
    """Why `get(name)` raises `BackendUnavailable` (its framework is missing), else None.

    Looks the framework up without importing it: a backend whose framework is
    installed may still fail to import.
    """
    name = _resolve(name)
    _, extra, requires = _REGISTRY[name]
    if requires is None or importlib.util.find_spec(requires) is not None:
        return None
    how = f"pip install 'lfq[{extra}]'" if extra else f"install {requires}"
    return f"backend {name!r} needs {requires}, which is not installed: {how}"


def is_available(name: str) -> bool:
    """Whether `get(name)` would succeed (its framework is installed)."""
    try:
        get(name)
    except BackendUnavailable:
        return False
    return True


def get(backend: str = "numpy") -> LFQBackend:
    """The backend instance registered under `backend` (default: the NumPy reference).

    Raises:
        ValueError: unknown name (the message lists the known ones).
        BackendUnavailable: its framework is not installed (the message names the pip extra).
    """
    name = _resolve(backend)
    with _LOCK:
        if name in _INSTANCES:
            return _INSTANCES[name]
        target = _REGISTRY[name][0]
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailable(reason)
    module_name, attr = target.split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    instance = cls()
    with _LOCK:
        return _INSTANCES.setdefault(name, instance)

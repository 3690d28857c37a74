"""`Target`: a backend seen only through the `LFQBackend` protocol, plus a device.

The suite never touches a framework: arrays go in through `asarray` and come
back through `to_numpy`. A device ("cpu", "cuda", ...) is passed to `asarray` as
the keyword `device`, which backends may accept (see docs/conformance.md); on
the default device no keyword is passed, so a backend without it runs unchanged.
"""

from __future__ import annotations

import inspect

import numpy as np

__all__ = ["DeviceUnsupported", "Target"]


class DeviceUnsupported(TypeError):
    """A device was asked for but the backend's `asarray` takes no `device` argument."""


class Target:
    """A backend under test and where its arrays live.

    Args:
        backend: an `lfq.LFQBackend` (eager or compiled).
        device: None for the framework's default device, else a device string
            given to `backend.asarray(..., device=device)`.
        parent: for a compiled target, the eager one it came from.
        registry_name: the name the backend was asked for by (`backend` may be
            that name itself); reports and reproducers use it.
    """

    def __init__(
        self, backend, device: str | None = None, parent: Target | None = None, registry_name: str | None = None
    ):
        if isinstance(backend, str):
            import lfq

            registry_name, backend = backend, lfq.get(backend)
        self.backend = backend
        self.device = device
        self.parent = parent  # the eager target of a compiled one
        self.registry_name = registry_name
        if device is not None and not _accepts_device(backend.asarray):
            raise DeviceUnsupported(
                f"device={device!r} was asked for, but backend {getattr(backend, 'name', backend)!r}'s "
                "asarray(array, dtype=None) takes no `device` keyword: add "
                "`device: str | None = None` to asarray (docs/conformance.md, 'Devices'), "
                "or run without --device"
            )

    @property
    def name(self) -> str:
        """The registry name it was asked for by, else the backend's own `name`."""
        if self.parent is not None:
            return self.parent.name
        return self.registry_name or getattr(self.backend, "name", type(self.backend).__name__)

    def put(self, array: np.ndarray, dtype: str | None = None):
        """A NumPy array as the backend's native array (of dtype name `dtype`)."""
        if self.device is None:
            return self.backend.asarray(array, dtype)
        return self.backend.asarray(array, dtype, device=self.device)

    def get(self, native) -> np.ndarray:
        """A native array (or a NumPy array some backends return, e.g. code usage) as NumPy."""
        if isinstance(native, (np.ndarray, np.generic)):
            return np.asarray(native)
        return np.asarray(self.backend.to_numpy(native))

    def compiled(self) -> Target:
        """The backend's compiled mode on the same device."""
        return Target(self.backend.compiled(), self.device, parent=self, registry_name=self.registry_name)


def _accepts_device(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: try and see
        return True
    return any(p.name == "device" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)

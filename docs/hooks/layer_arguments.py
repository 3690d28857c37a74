"""Griffe extension of the API page: the layers' argument lists, as `help()` shows them.

The layers' "Args:" sections are filled at import time from the one table of
layer arguments (`lfq.layer_options.LAYER_ARGUMENTS`, through
`lfq.layer_options.document`), so the source holds an empty section. For each
object whose docstring has one, this extension imports the object and takes its
run-time docstring; where the import fails (a framework not installed) the
source's text stays.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re

import griffe

_EMPTY_ARGS = re.compile(r"^\s*Args:\s*\n(\s*\n|\s*\S+:(?!\S))", re.M)


def _runtime_doc(path: str):
    module_path, _, name = path.rpartition(".")
    if module_path.startswith("backends."):  # installed as lfq.backends
        module_path = "lfq." + module_path
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401 - before tensorflow (their bundled libraries clash otherwise)
    try:
        return inspect.getdoc(getattr(importlib.import_module(module_path), name))
    except Exception:  # noqa: BLE001 - keep the source's docstring
        return None


class LayerArguments(griffe.Extension):
    """Replace a docstring with an empty "Args:" section by the object's run-time docstring."""

    def on_object(self, *, obj, **kwargs) -> None:
        doc = obj.docstring
        if doc is None or not _EMPTY_ARGS.search(doc.value) or not (obj.is_class or obj.is_function):
            return
        runtime = _runtime_doc(obj.path)
        if runtime:
            doc.value = runtime

"""Run a function right after a module has been imported, without importing it.

ckpt is loaded at interpreter start, before the training script has imported
torch (and importing torch there would cost seconds for scripts that never use
it). A finder at the front of sys.meta_path notices the import of a watched
module, lets the real loader execute it, then calls the registered functions
with the module. A module already imported gets them at once.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
import warnings
from typing import Callable, Dict, List

Callback = Callable[[object], None]

_lock = threading.RLock()
_pending: Dict[str, List[Callback]] = {}


def _run(name: str, module, callbacks: List[Callback]) -> None:
    for callback in callbacks:
        try:
            callback(module)
        except Exception as exc:  # never break the program's import
            warnings.warn(f"ckpt: post-import hook for {name} failed: {exc!r}", RuntimeWarning, stacklevel=2)


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the callbacks."""

    def __init__(self, name: str, loader):
        self.name = name
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Give the module its real loader back before running its code.
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        with _lock:
            callbacks = _pending.pop(self.name, [])
        _run(self.name, module, callbacks)

    def __getattr__(self, attr):
        return getattr(self.loader, attr)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(fullname, spec.loader)
        return spec


_finder = _Finder()


def when_imported(name: str, callback: Callback) -> None:
    """Calls callback(module) once module `name` has been executed (now, if it has)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _pending.setdefault(name, []).append(callback)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        warnings.warn(f"ckpt: {name} is being imported right now; cannot hook it", RuntimeWarning, stacklevel=2)
        return
    _run(name, module, [callback])

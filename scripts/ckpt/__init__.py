"""Python side of libckpt: bindings of ckpt.h, a drop-in for deepspeed.checkpointing
(`ckpt.checkpointing`), and the zero-code-change integrations (`ckpt.autopatch`).

Importing ckpt never imports torch and works without libckpt in the process;
calling into the library then raises a RuntimeError that says to run under
LD_PRELOAD=/path/to/libckpt.so or scripts/ckpt-run.
"""

from .api import (
    RESIDENCY_NAMES,
    mode,
    offload,
    prefetch,
    query,
    region,
    release_cached,
    restore,
    restore_ptr,
    set_stream,
    stats,
    step,
    wait,
)
from .errors import CkptError, LibraryNotLoaded
from .launch import launch_env
from .library import available, load_library

__version__ = "0.1.0"

__all__ = [
    "CkptError",
    "LibraryNotLoaded",
    "RESIDENCY_NAMES",
    "available",
    "launch_env",
    "library_path",
    "load_library",
    "mode",
    "offload",
    "prefetch",
    "query",
    "region",
    "release_cached",
    "restore",
    "restore_ptr",
    "set_stream",
    "stats",
    "step",
    "wait",
]


def library_path():
    """Path of the bound libckpt.so (None if unknown); raises when it is not loaded."""
    from . import library

    return library.get().path


def __getattr__(name):
    # `ckpt.checkpointing` imports torch: load it only when asked for.
    if name in ("checkpointing", "autopatch"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Python side of libckpt: bindings of ckpt.h, a drop-in for deepspeed.checkpointing
(`ckpt.checkpointing`), and the zero-code-change integrations (`ckpt.autopatch`).

Importing ckpt never imports torch and works without libckpt in the process:
then `ckpt.region` and `ckpt.stats` warn once and do nothing, and the explicit
calls (offload, restore, ...) raise a RuntimeError that says to run under
LD_PRELOAD=/path/to/libckpt.so or ckpt-run. A pip-installed package carries
its own libckpt.so (`ckpt.bundled_library()`), which its `ckpt-run` preloads.
"""

from .api import (
    RESIDENCY_NAMES,
    mode,
    offload,
    peer_init,
    peer_unique_id,
    pin,
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
from .errors import CkptError, LibraryNotLoaded, PeerError
from .launch import launch_env
from .library import available, load_library
from .library import bundled_path as bundled_library

__version__ = "0.1.0"

__all__ = [
    "CkptError",
    "LibraryNotLoaded",
    "PeerError",
    "RESIDENCY_NAMES",
    "available",
    "bundled_library",
    "launch_env",
    "library_path",
    "load_library",
    "mode",
    "offload",
    "peer_init",
    "peer_unique_id",
    "pin",
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
    """Path of the bound libckpt.so (None if unknown); raises when it is not loaded
    (bundled_library() is the copy a pip install ships, loaded or not)."""
    from . import library

    return library.get().path


def __getattr__(name):
    # `ckpt.checkpointing` imports torch: load it only when asked for.
    if name in ("checkpointing", "autopatch"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

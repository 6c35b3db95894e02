"""Finds libckpt in this process and binds its C API (include/ckpt.h) with ctypes.

libckpt only works when it is preloaded (it must see the CUDA driver calls), so
the process's global namespace is searched first: a preloaded library is there.
CKPT_LIBRARY=/path, or load_library(path), load one by path instead; a library
loaded that way keeps its region bookkeeping but intercepts no allocation, and
a warning says so.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from typing import Optional

from .errors import LibraryNotLoaded

# uintptr_t is as wide as a pointer.
c_uintptr = ctypes.c_uint64 if ctypes.sizeof(ctypes.c_void_p) == 8 else ctypes.c_uint32


class CkptStats(ctypes.Structure):
    """Mirror of struct ckpt_stats, field by field, in the header's order."""

    _fields_ = [
        ("size", ctypes.c_uint64),
        ("hooked_calls", ctypes.c_uint64),
        ("regions_opened", ctypes.c_uint64),
        ("regions_closed", ctypes.c_uint64),
        ("tagged_allocs", ctypes.c_uint64),
        ("tagged_allocs_live", ctypes.c_uint64),
        ("tagged_bytes_live", ctypes.c_uint64),
        ("untagged_allocs", ctypes.c_uint64),
        ("mapping_cache_hits", ctypes.c_uint64),
        ("mapping_cache_bytes", ctypes.c_uint64),
        ("offloads", ctypes.c_uint64),
        ("offloaded_bytes_total", ctypes.c_uint64),
        ("restores", ctypes.c_uint64),
        ("restored_bytes_total", ctypes.c_uint64),
        ("host_bytes_in_use", ctypes.c_uint64),
        ("host_pool_bytes", ctypes.c_uint64),
        ("device_bytes_released", ctypes.c_uint64),
        ("device_bytes_released_peak", ctypes.c_uint64),
        ("copy_seconds_total", ctypes.c_double),
        ("stall_seconds_total", ctypes.c_double),
        ("host_pool_exhausted", ctypes.c_uint64),
        ("restore_oom", ctypes.c_uint64),
        ("driver_errors", ctypes.c_uint64),
        ("device_used_now", ctypes.c_uint64),
        ("device_used_peak", ctypes.c_uint64),
        ("gate_timeouts", ctypes.c_uint64),
        ("captured_allocs", ctypes.c_uint64),
        ("swaps_deferred_capture", ctypes.c_uint64),
        ("streams_known", ctypes.c_uint64),
        # peer modes, contiguous buffers, verify (issue 12)
        ("peer_bytes_in_use", ctypes.c_uint64),
        ("peer_slab_bytes", ctypes.c_uint64),
        ("store_allocs", ctypes.c_uint64),
        ("contiguous_bytes", ctypes.c_uint64),
        ("allocs_avoided", ctypes.c_uint64),
        ("peer_mismatches", ctypes.c_uint64),
        ("peer_lost", ctypes.c_uint64),
        ("verify_checked", ctypes.c_uint64),
        ("verify_failures", ctypes.c_uint64),
        # offload budget (issue 14)
        ("budget_mode", ctypes.c_uint64),
        ("budget_bytes", ctypes.c_uint64),
        ("budget_why", ctypes.c_uint64),
        ("budget_kept_regions", ctypes.c_uint64),
        ("budget_kept_bytes", ctypes.c_uint64),
        ("budget_survivor_bytes", ctypes.c_uint64),
        ("budget_d2h_gbps", ctypes.c_double),
        ("budget_h2d_gbps", ctypes.c_double),
        ("budget_copy_ratio", ctypes.c_double),
        ("regions_carried", ctypes.c_uint64),
    ]


# name -> (restype, argtypes), one entry per function of ckpt.h.
SIGNATURES = {
    "ckpt_region_begin": (ctypes.c_int, [ctypes.c_char_p]),
    "ckpt_region_end": (ctypes.c_int, []),
    "ckpt_profile_set": (ctypes.c_int, [ctypes.c_int, ctypes.c_int]),
    "ckpt_query": (ctypes.c_int, [c_uintptr, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]),
    "ckpt_offload": (ctypes.c_int, [ctypes.c_int]),
    "ckpt_prefetch": (ctypes.c_int, [ctypes.c_int]),
    "ckpt_restore": (ctypes.c_int, [ctypes.c_int]),
    "ckpt_restore_ptr": (ctypes.c_int, [c_uintptr]),
    "ckpt_wait": (ctypes.c_int, [ctypes.c_int]),
    "ckpt_step": (ctypes.c_int, []),
    "ckpt_set_stream": (ctypes.c_int, [c_uintptr]),
    "ckpt_release_cached": (ctypes.c_int, []),
    "ckpt_stats_get": (ctypes.c_int, [ctypes.POINTER(CkptStats), ctypes.c_size_t]),
    "ckpt_mode": (ctypes.c_char_p, []),
    # peer modes: the id is bytes, not a string (128, NUL bytes included): pass a
    # ctypes.create_string_buffer / bytes of the full length, never read it back as c_char_p
    "ckpt_peer_unique_id": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t]),
    "ckpt_peer_init": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]),
    "ckpt_pin": (ctypes.c_int, [c_uintptr]),
    # random numbers: cuRAND replay and the named RNG states (struct
    # ckpt_rng_states is opaque: a void pointer here)
    "ckpt_region_replay_begin": (ctypes.c_int, [ctypes.c_int]),
    "ckpt_region_replay_end": (ctypes.c_int, []),
    "ckpt_rng_add": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_ulonglong]),
    "ckpt_rng_fork": (ctypes.c_int, [ctypes.c_char_p]),
    "ckpt_rng_unfork": (ctypes.c_int, []),
    "ckpt_rng_get_states": (ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p)]),
    "ckpt_rng_set_states": (ctypes.c_int, [ctypes.c_void_p]),
    "ckpt_rng_states_free": (None, [ctypes.c_void_p]),
    "ckpt_rng_states_count": (ctypes.c_int, [ctypes.c_void_p]),
    "ckpt_rng_states_entry": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                             ctypes.POINTER(ctypes.c_ulonglong)]),
    "ckpt_rng_reset": (ctypes.c_int, []),
    "ckpt_rng_model_parallel_seed": (ctypes.c_int, [ctypes.c_ulonglong, ctypes.c_int]),
    "ckpt_python_loaded": (ctypes.c_int, []),
}


class Library:
    """The bound functions of one libckpt instance (attributes named as in C)."""

    def __init__(self, cdll: ctypes.CDLL, path: Optional[str], preloaded: bool):
        self.path = path
        self.preloaded = preloaded
        self.missing = []
        for name, (restype, argtypes) in SIGNATURES.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                self.missing.append(name)
                fn = self._absent(name)
            else:
                fn.restype = restype
                fn.argtypes = argtypes
            setattr(self, name, fn)

    def _absent(self, name: str):
        where = self.path or "the preloaded library"

        def call(*args):
            raise RuntimeError(f"{where} has no {name}: it does not match this ckpt package "
                               "(build both from one tree)")

        return call


_lock = threading.Lock()
_library: Optional[Library] = None
_searched = False
_search_error = ""


def _mapped_path(basename_prefix: str = "libckpt") -> Optional[str]:
    """Path of the mapped file whose name starts with basename_prefix (for messages)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if os.path.basename(path).startswith(basename_prefix):
                        return path
    except OSError:
        pass
    return None


def _from_global_namespace() -> Optional[Library]:
    process = ctypes.CDLL(None)
    if not hasattr(process, "ckpt_region_begin"):
        return None
    return Library(process, _mapped_path(), preloaded=True)


def _from_path(path: str) -> Library:
    try:
        cdll = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise LibraryNotLoaded(f"cannot load {path}: {exc}") from None
    lib = Library(cdll, path, preloaded=False)
    warnings.warn(
        f"libckpt loaded from {path} without LD_PRELOAD: regions are counted but "
        "no CUDA allocation is intercepted, so nothing is offloaded",
        RuntimeWarning,
        stacklevel=3,
    )
    return lib


def load_library(path: Optional[str] = None) -> Library:
    """Binds libckpt: the preloaded one, else `path`, else $CKPT_LIBRARY."""
    global _library, _searched, _search_error
    with _lock:
        if _library is not None:
            return _library
        try:
            lib = _from_global_namespace()
            if lib is None:
                path = path or os.environ.get("CKPT_LIBRARY") or None
                if path is None:
                    raise LibraryNotLoaded("no ckpt_region_begin in the process and CKPT_LIBRARY is unset")
                lib = _from_path(path)
        except LibraryNotLoaded as exc:
            _searched = True
            _search_error = exc.detail
            raise
        _library = lib
        _searched = True
        return lib


def get() -> Library:
    """The bound library; raises LibraryNotLoaded (a RuntimeError) when absent."""
    lib = _library
    if lib is not None:
        return lib
    if _searched:
        raise LibraryNotLoaded(_search_error)
    return load_library()


def get_or_none() -> Optional[Library]:
    """The bound library, or None: for integrations that degrade to doing nothing."""
    lib = _library
    if lib is not None or _searched:
        return lib
    try:
        return load_library()
    except LibraryNotLoaded:
        return None


def search_error() -> str:
    """Why the last search found no library ("" when it did, or none ran)."""
    return _search_error


def bundled_path() -> Optional[str]:
    """The libckpt.so installed inside this package (pip install .), or None.

    That copy is what the installed `ckpt-run` preloads. It is never loaded
    into the process by `import ckpt`: loaded by path, libckpt sees no CUDA
    allocation, so it has to come through LD_PRELOAD (ckpt-run does that).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libckpt.so")
    return path if os.path.isfile(path) else None


def available() -> bool:
    """True when libckpt is bound (preloaded, or loaded by path)."""
    return get_or_none() is not None

"""The Python face of ckpt.h: regions, offload/restore, residency queries, stats.

Without libckpt in the process, `region` and `stats` warn once (a
RuntimeWarning with the LD_PRELOAD hint) and do nothing: a region is then an
empty context and stats() an empty dict, so instrumented code runs unchanged.
The explicit calls (offload, restore, query, step, mode, ...) raise
LibraryNotLoaded (a RuntimeError with the same hint). Every function raises
CkptError on an unexpected negative return code. "Nothing to do" (CKPT_ENOENT: nothing tagged there; CKPT_EDISABLED:
libckpt runs as a pass-through) is an answer, not an error: the offload and
restore calls return False for it.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
import warnings
from typing import Callable, Dict, Optional, Tuple, TypeVar, Union

from . import library
from .errors import EDISABLED, EINVAL, ENOENT, ERROR_NAMES, ESTATE, CkptError, LibraryNotLoaded, PeerError

RESIDENCY_NAMES = {
    0: "untagged",
    1: "device",
    2: "offloading",
    3: "host",
    4: "restoring",
    5: "peer",
}

_NOTHING_TO_DO = (ENOENT, EDISABLED)

F = TypeVar("F", bound=Callable)


_warned_absent = False


def _library_or_warn(what: str):
    """The bound library, or None after one warning per process."""
    global _warned_absent
    lib = library.get_or_none()
    if lib is None and not _warned_absent:
        _warned_absent = True
        hint = str(LibraryNotLoaded(library.search_error()))
        warnings.warn(f"ckpt: {what} does nothing: {hint}", RuntimeWarning, stacklevel=3)
    return lib


def _check(call: str, rc: int) -> int:
    if rc < 0:
        raise CkptError(call, rc)
    return rc


def _done_or_nothing(call: str, rc: int) -> bool:
    if rc in _NOTHING_TO_DO:
        return False
    _check(call, rc)
    return True


def set_stream(cu_stream: int) -> None:
    """Tells libckpt the CUstream this thread launches work on (0 = legacy)."""
    _check("ckpt_set_stream", library.get().ckpt_set_stream(int(cu_stream)))


def sync_torch_stream() -> None:
    """Passes torch's current CUDA stream to libckpt, if torch already uses CUDA.

    Never imports torch nor initialises CUDA: code that has not touched CUDA has
    no stream worth telling.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if not torch.cuda.is_initialized():
            return
        stream = torch.cuda.current_stream().cuda_stream
    except Exception:  # a torch without CUDA, or mid-import
        return
    library.get().ckpt_set_stream(stream)


def step() -> None:
    """Marks the start of a training step (a new offload cycle)."""
    rc = library.get().ckpt_step()
    if rc != EDISABLED:
        _check("ckpt_step", rc)


def offload(region_id: int) -> bool:
    """Starts offloading a closed region's survivors now; False: nothing to offload."""
    return _done_or_nothing("ckpt_offload", library.get().ckpt_offload(int(region_id)))


def prefetch(region_id: int) -> bool:
    """Starts copying a region back to the device; False: nothing to bring back."""
    return _done_or_nothing("ckpt_prefetch", library.get().ckpt_prefetch(int(region_id)))


def restore(region_id: int) -> bool:
    """Brings a region back to device memory before returning; False: nothing to do."""
    return _done_or_nothing("ckpt_restore", library.get().ckpt_restore(int(region_id)))


def restore_ptr(ptr: int) -> bool:
    """restore() of the region holding device address `ptr`; False: not tagged."""
    return _done_or_nothing("ckpt_restore_ptr", library.get().ckpt_restore_ptr(int(ptr)))


def wait(region_id: int) -> bool:
    """Blocks until the region's offload or restore has finished; False: none."""
    return _done_or_nothing("ckpt_wait", library.get().ckpt_wait(int(region_id)))


def release_cached() -> int:
    """Hands the device memory of free cached mappings back to the driver; bytes released."""
    return _check("ckpt_release_cached", library.get().ckpt_release_cached())


def query(ptr: int) -> Optional[Tuple[int, str]]:
    """(region id, residency name) of the tagged allocation holding `ptr`, or None."""
    region_id = ctypes.c_int(0)
    residency = ctypes.c_int(0)
    rc = library.get().ckpt_query(int(ptr), ctypes.byref(region_id), ctypes.byref(residency))
    if rc in _NOTHING_TO_DO:
        return None
    _check("ckpt_query", rc)
    return region_id.value, RESIDENCY_NAMES.get(residency.value, f"unknown({residency.value})")


def mode() -> str:
    """The mode in effect: "none", "host", "peer" or "peer+host"."""
    raw = library.get().ckpt_mode()
    return raw.decode() if raw else "none"


# ---- peer modes ------------------------------------------------------------

PEER_ID_BYTES = 128  # NCCL's unique id (ncclUniqueId): bytes, not a string


def peer_unique_id() -> bytes:
    """A fresh NCCL unique id for a peer group (rank 0 makes it, the group's own
    broadcast hands it to the others; ckpt.checkpointing.configure does both)."""
    out = ctypes.create_string_buffer(PEER_ID_BYTES)
    rc = library.get().ckpt_peer_unique_id(out, PEER_ID_BYTES)
    if rc < 0:
        raise PeerError(f"ckpt_peer_unique_id failed ({ERROR_NAMES.get(rc, rc)}): libckpt could not load NCCL "
                        "(libnccl.so.2, or CKPT_NCCL_LIBRARY) or ncclGetUniqueId failed; its log says which")
    return out.raw


def peer_init(unique_id: bytes, size: int, rank: int) -> None:
    """Joins this process to the peer group `unique_id` as `rank` of `size`
    (collective: every rank calls it; bounded by CKPT_PEER_TIMEOUT_MS). The
    device context the tagged memory lives on must be current on this thread.
    Raises PeerError, saying why, when the group cannot be made."""
    unique_id = bytes(unique_id)
    if len(unique_id) != PEER_ID_BYTES:
        raise ValueError(f"a peer group id is {PEER_ID_BYTES} bytes, not {len(unique_id)}")
    rc = library.get().ckpt_peer_init(unique_id, PEER_ID_BYTES, int(size), int(rank))
    if rc >= 0:
        return
    if rc == EINVAL:
        why = f"rank {rank} of size {size} is not a position in a group (or the id is not NCCL's)"
    elif rc == EDISABLED:
        why = "libckpt runs disabled (pass-through) in this process"
    elif rc == ESTATE and mode() == "host":  # the group failed: libckpt fell back to host memory
        why = ("the group could not be made: the communicator was not complete within CKPT_PEER_TIMEOUT_MS "
               "(is every rank of the group running and joining?) or NCCL failed; libckpt's 'peer mode:' "
               "warning says which; this rank's offloads now go to host memory")
    elif rc == ESTATE:
        why = ("this process already joined a peer group (once per process), or no CUDA context is current "
               "on this thread (make the device the tagged memory lives on current first)")
    else:
        why = "see libckpt's log"
    raise PeerError(f"ckpt_peer_init (rank {rank} of {size}) failed ({ERROR_NAMES.get(rc, rc)}): {why}")


def pin(tensor_or_ptr) -> bool:
    """Never offload the tagged allocation holding this tensor (or device
    address) again; it is brought back to the device first if it is not there.

    For buffers another library keeps the address of, such as buffers
    registered with NCCL (ncclCommRegister, directly or through a framework's
    buffer registration): libckpt does not see such registrations, and
    swapping the memory under them would corrupt the collectives. Call it
    right after allocating the buffer. False: the address is not tagged
    (nothing to pin)."""
    ptr = tensor_or_ptr.data_ptr() if hasattr(tensor_or_ptr, "data_ptr") else int(tensor_or_ptr)
    return _done_or_nothing("ckpt_pin", library.get().ckpt_pin(ptr))


def stats() -> Dict[str, Union[int, float]]:
    """The library's struct ckpt_stats as a dict (fields it did not fill are left out);
    {} (after one warning) when libckpt is not loaded."""
    lib = _library_or_warn("ckpt.stats()")
    if lib is None:
        return {}
    out = library.CkptStats()
    _check("ckpt_stats_get", lib.ckpt_stats_get(ctypes.byref(out), ctypes.sizeof(out)))
    filled = out.size or ctypes.sizeof(out)
    result: Dict[str, Union[int, float]] = {}
    for name, ctype in library.CkptStats._fields_:
        field = getattr(library.CkptStats, name)
        if field.offset + ctypes.sizeof(ctype) <= filled:
            result[name] = getattr(out, name)
    return result


class region:
    """A hand-marked checkpoint region: `with ckpt.region("block3"):` or `@ckpt.region("mlp")`.

    Device allocations made inside are tagged with the region, and offloaded
    once a later region has closed. `.id` is the region id while open and after
    (None when libckpt runs disabled, or is not loaded: then the first region
    warns once and every region does nothing). Regions nest; each `with` opens
    a new one.
    """

    def __init__(self, name: str = "region"):
        self.name = str(name)
        self.id: Optional[int] = None
        self._open = threading.local()

    def __enter__(self) -> "region":
        lib = _library_or_warn("ckpt.region()")
        stack = self._stack()
        if lib is None:
            stack.append(None)
            self.id = None
            return self
        sync_torch_stream()
        rc = lib.ckpt_region_begin(self.name.encode())
        if rc == EDISABLED:
            stack.append(None)
            self.id = None
            return self
        self.id = _check("ckpt_region_begin", rc)
        stack.append(self.id)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        opened = self._stack().pop()
        if opened is None:
            return
        sync_torch_stream()
        rc = library.get().ckpt_region_end()
        if rc < 0 or rc != opened:
            message = (
                f"closing region {self.name!r} (id {opened}): ckpt_region_end returned {rc}; "
                "a region opened inside it was not closed"
            )
            if exc_type is not None or rc >= 0:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            else:
                _check("ckpt_region_end", rc)

    def _stack(self) -> list:
        stack = getattr(self._open, "ids", None)
        if stack is None:
            stack = self._open.ids = []
        return stack

    def __call__(self, fn: F) -> F:
        name = self.name

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with region(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

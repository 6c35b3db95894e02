"""Regions around checkpointed forwards, and restores before their recomputes.

Shared by ckpt.checkpointing, the torch.utils.checkpoint patch and the module
hooks. A checkpoint's forward runs inside a region, so what it allocates (its
outputs: the next checkpoint's inputs) is tagged and offloaded once the next
region has closed; its recompute first restores its inputs, which also makes
libckpt prefetch the region before, and runs with libckpt's cuRAND generators
replayed (replay_region). None of this is done when it would be
useless: without libckpt, without autograd recording, or inside a recompute
(what a recompute allocates is consumed at once by the backward).

Unexpected return codes warn once and never stop training: an offloaded tensor
stays readable at its address, only slower.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from typing import Any, Iterable, Iterator, Optional

import torch

from . import api, library
from .errors import EDISABLED, ENOENT, ERROR_NAMES
from .rng import RNGSnapshot

# Tensors on these devices can be tagged by libckpt (a test seam).
RESTORE_DEVICE_TYPES = ("cuda",)

_local = threading.local()
_warned: set = set()


def _warn_once(key: Any, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def recomputing() -> bool:
    """True on a thread that is running a checkpoint's recompute."""
    return getattr(_local, "depth", 0) > 0


@contextlib.contextmanager
def recompute_scope() -> Iterator[None]:
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def in_backward() -> bool:
    """True while this thread executes an autograd backward (recomputes happen there)."""
    try:
        return torch._C._current_graph_task_id() != -1
    except Exception:
        return False


def regions_wanted() -> bool:
    """Whether a forward starting now should run in a region of its own."""
    return (
        library.get_or_none() is not None
        and torch.is_grad_enabled()
        and not recomputing()
        and not in_backward()
    )


def begin_region(name: str) -> Optional[int]:
    """Opens a region; its id, or None when libckpt is absent, disabled or failing."""
    lib = library.get_or_none()
    if lib is None:
        return None
    api.sync_torch_stream()
    rc = lib.ckpt_region_begin(name.encode("utf-8", "replace"))
    if rc < 0:
        if rc != EDISABLED:
            _warn_once(("begin", rc), f"ckpt_region_begin({name!r}) returned {ERROR_NAMES.get(rc, rc)}: "
                       "running without a region")
        return None
    return rc


def end_region(region_id: Optional[int]) -> None:
    """Closes the region begin_region() opened (nothing when it opened none)."""
    if region_id is None:
        return
    lib = library.get()
    api.sync_torch_stream()
    rc = lib.ckpt_region_end()
    if rc != region_id:
        _warn_once(("end", rc), f"ckpt_region_end returned {ERROR_NAMES.get(rc, rc)} while closing "
                   f"region {region_id}: regions were not closed in order")


@contextlib.contextmanager
def forward_region(name: str, active: bool = True) -> Iterator[Optional[int]]:
    """Runs the body in a region when `active`; yields the region id or None."""
    region_id = begin_region(name) if active else None
    try:
        yield region_id
    finally:
        end_region(region_id)


@contextlib.contextmanager
def replay_region(region_id: Optional[int]) -> Iterator[None]:
    """Runs a recompute of region `region_id` with libckpt's cuRAND generators (and
    named RNG states) set back to where they were when the region opened, and
    put back afterwards (ckpt_region_replay_begin/end). torch's own generators
    are the RNG snapshot's business (Philox seed and offset, restored as they
    are); this is for C/C++ code drawing through the cuRAND host API. Nothing
    happens without libckpt or a region; a region libckpt no longer has a
    record of (CKPT_ENOENT) recomputes without it."""
    lib = library.get_or_none() if region_id is not None else None
    begin = getattr(lib, "ckpt_region_replay_begin", None)
    try:
        rc = begin(region_id) if begin is not None else ENOENT
    except RuntimeError:  # a libckpt older than this package: no RNG API
        rc = ENOENT
    if rc < 0 and rc not in (ENOENT, EDISABLED):
        _warn_once(("replay", rc), f"ckpt_region_replay_begin({region_id}) returned {ERROR_NAMES.get(rc, rc)}: "
                   "cuRAND draws of this recompute may differ from its forward")
    try:
        yield
    finally:
        if rc == 0:
            lib.ckpt_region_replay_end()


def _handle_restore(call: str, rc: int) -> None:
    if rc < 0 and rc not in (ENOENT, EDISABLED):
        _warn_once((call, rc), f"{call} returned {ERROR_NAMES.get(rc, rc)}: the data stays readable "
                   "where it is (host memory), backward will be slower")


def _tensors_in(values: Iterable[Any]) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _tensors_in(value)
        elif isinstance(value, dict):
            yield from _tensors_in(value.values())


def restore_tensors(*values: Any) -> int:
    """ckpt_restore_ptr() for every CUDA tensor in values (nested tuples, lists,
    dicts too), each storage once; returns how many calls were made."""
    lib = library.get_or_none()
    if lib is None:
        return 0
    seen = set()
    for tensor in _tensors_in(values):
        if tensor.device.type not in RESTORE_DEVICE_TYPES:
            continue
        try:
            ptr = tensor.data_ptr()
        except Exception:  # tensor subclasses without storage
            continue
        if ptr == 0 or ptr in seen:
            continue
        if not seen:
            api.sync_torch_stream()
        seen.add(ptr)
        _handle_restore("ckpt_restore_ptr", lib.ckpt_restore_ptr(ptr))
    return len(seen)


def restore_region(region_id: int) -> None:
    """ckpt_restore(region_id), from a backward hook."""
    lib = library.get_or_none()
    if lib is None:
        return
    api.sync_torch_stream()
    _handle_restore("ckpt_restore", lib.ckpt_restore(region_id))


def name_of(fn: Any) -> str:
    """A readable region name for a checkpointed callable."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, RegionFunction):
        target = target.fn
    if isinstance(target, torch.nn.Module):
        return type(target).__name__
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(target).__name__
    return name.rpartition("<locals>.")[2]


class RegionFunction:
    """Wraps a checkpointed function. Its first call is the forward and runs in a
    region (when `active`); every later call is a recompute: it restores the
    tensor arguments first and runs marked as a recompute, on the RNG snapshot
    of the forward when `replay_rng` is set (for the model-parallel tracker,
    which torch's own checkpoint does not know about)."""

    def __init__(self, fn: Any, name: str, active: bool, replay_rng: bool = False):
        self.fn = fn
        self.name = name
        self.active = active
        self.replay_rng = replay_rng
        self.calls = 0
        self.snapshot: Optional[RNGSnapshot] = None
        self.region_id: Optional[int] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            if self.replay_rng:
                self.snapshot = RNGSnapshot.capture(init_cuda=False)
            with forward_region(self.name, self.active) as region_id:
                self.region_id = region_id
                return self.fn(*args, **kwargs)
        restore_tensors(args, kwargs)
        replay = self.snapshot.replay() if self.snapshot is not None else contextlib.nullcontext()
        with recompute_scope(), replay, replay_region(self.region_id):
            return self.fn(*args, **kwargs)

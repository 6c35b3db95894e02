"""RNG state for recomputation: the named-state tracker of model-parallel code and
snapshots that make a recompute draw the same random numbers as its forward.

"Device" RNG means the current CUDA device's generator. On a machine without
CUDA it means the CPU generator, so the tracker and the tests behave the same
there (DeepSpeed's would fail without an accelerator).

When libckpt is in the process, the process-wide tracker is mirrored into
libckpt's named RNG states (ckpt_rng_add/fork/unfork/reset), so C/C++ code in
the same process that draws through the cuRAND host API follows the same
forks. Python's behaviour is the reference: what libckpt answers never changes
it (an unexpected code warns once).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from typing import Any, Dict, Iterator, Optional

import torch

from . import library
from .errors import EDISABLED, ENOENT, ERROR_NAMES

_MODEL_PARALLEL_RNG_TRACKER_NAME = "model-parallel-rng"


def _cuda() -> bool:
    return torch.cuda.is_available()


def get_device_rng_state() -> torch.Tensor:
    """State of the device generator (CUDA's current device, else the CPU's)."""
    return torch.cuda.get_rng_state() if _cuda() else torch.get_rng_state()


def _set_cuda_rng_state(new_state: torch.Tensor, device=-1) -> None:
    """Sets a CUDA generator's state without cloning `new_state` first (cloning costs a
    copy on every checkpoint); falls back to the CPU generator without CUDA."""
    if not _cuda():
        torch.set_rng_state(new_state)
        return
    if device == -1:
        device = torch.device("cuda")
    elif isinstance(device, str):
        device = torch.device(device)
    elif isinstance(device, int):
        device = torch.device("cuda", device)

    def apply() -> None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].set_state(new_state)

    torch.cuda._lazy_call(apply)


def set_device_rng_state(state: torch.Tensor) -> None:
    _set_cuda_rng_state(state)


def device_manual_seed(seed: int) -> None:
    """Seeds the device generator only (the CPU one too when it is the device)."""
    if _cuda():
        torch.cuda.manual_seed(seed)
    else:
        torch.manual_seed(seed)


# ---- the mirror into libckpt's named states ------------------------------------

_mirror_local = threading.local()
_mirror_warned: set = set()


def _mirror(call: str, *args: Any) -> Optional[int]:
    """lib.<call>(*args) when libckpt is loaded and mirroring is on; its code, or None."""
    if getattr(_mirror_local, "off", 0):
        return None
    lib = library.get_or_none()
    if lib is None:
        return None
    fn = getattr(lib, call, None)  # test doubles of the library may lack it
    if fn is None:
        return None
    try:
        rc = fn(*args)
    except RuntimeError:  # a libckpt older than this package: no RNG API
        return None
    if rc is not None and rc < 0 and rc not in (ENOENT, EDISABLED) and call not in _mirror_warned:
        _mirror_warned.add(call)
        warnings.warn(f"ckpt: {call} returned {ERROR_NAMES.get(rc, rc)}: cuRAND generators in this process "
                      "may not follow the RNG tracker", RuntimeWarning, stacklevel=3)
    return rc


@contextlib.contextmanager
def mirror_off() -> Iterator[None]:
    """The tracker calls in the body are not mirrored (model_parallel_cuda_manual_seed
    makes one ckpt_rng_model_parallel_seed call instead)."""
    _mirror_local.off = getattr(_mirror_local, "off", 0) + 1
    try:
        yield
    finally:
        _mirror_local.off -= 1


def _name(name: str) -> bytes:
    return name.encode("utf-8", "replace")


class CudaRNGStatesTracker:
    """Named device-RNG states, so code can draw from a stream of its own and then
    return the default generator exactly where it was.

    `add(name, seed)` creates a state (each name and each seed at most once);
    `with tracker.fork(name):` swaps that state in and, on exit, saves the
    advanced state under the name and puts the previous state back.
    """

    def __init__(self) -> None:
        self.states_: Dict[str, torch.Tensor] = {}
        self.seeds_: set = set()

    def _mirrored(self) -> bool:
        return self is _CUDA_RNG_STATE_TRACKER

    def reset(self) -> None:
        """Forgets every state and seed."""
        self.states_ = {}
        self.seeds_ = set()
        if self._mirrored():
            _mirror("ckpt_rng_reset")

    def get_states(self) -> Dict[str, torch.Tensor]:
        """A copy of the name -> state map (the states themselves are not copied:
        fork() replaces them rather than mutating them)."""
        return copy.copy(self.states_)

    def set_states(self, states: Dict[str, torch.Tensor]) -> None:
        """Installs a map from get_states() (unchecked, for speed)."""
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        """Creates state `name` from `seed`; refuses a name or a seed seen before."""
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"cuda rng state {name} already exists")
        self.seeds_.add(seed)
        saved = get_device_rng_state()
        device_manual_seed(seed)
        self.states_[name] = get_device_rng_state()
        set_device_rng_state(saved)
        if self._mirrored():
            _mirror("ckpt_rng_add", _name(name), seed)

    @contextlib.contextmanager
    def fork(self, name: str = _MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
        """Runs the body on state `name`, then restores the state it found."""
        if name not in self.states_:
            raise ValueError(f"cuda rng state {name} is not added")
        outer = get_device_rng_state()
        set_device_rng_state(self.states_[name])
        # libckpt's named state: cuRAND generators fork along (0: it did).
        c_forked = self._mirrored() and _mirror("ckpt_rng_fork", _name(name)) == 0
        try:
            yield
        finally:
            if c_forked:
                _mirror("ckpt_rng_unfork")
            self.states_[name] = get_device_rng_state()
            set_device_rng_state(outer)


_CUDA_RNG_STATE_TRACKER = CudaRNGStatesTracker()


def get_cuda_rng_tracker() -> CudaRNGStatesTracker:
    """The process-wide tracker."""
    return _CUDA_RNG_STATE_TRACKER


class RNGSnapshot:
    """CPU state, CUDA state and tracker states at one moment, replayable later."""

    __slots__ = ("cpu", "cuda", "tracker")

    def __init__(self, cpu: torch.Tensor, cuda: Optional[torch.Tensor], tracker: Dict[str, torch.Tensor]):
        self.cpu = cpu
        self.cuda = cuda
        self.tracker = tracker

    @classmethod
    def capture(cls, init_cuda: bool = True) -> "RNGSnapshot":
        """Takes a snapshot. init_cuda=False leaves CUDA's state out unless CUDA is
        already initialised (torch's non-reentrant checkpoint refuses a forward
        that initialises CUDA)."""
        cuda = None
        if _cuda() and (init_cuda or torch.cuda.is_initialized()):
            cuda = torch.cuda.get_rng_state()
        return cls(torch.get_rng_state(), cuda, _CUDA_RNG_STATE_TRACKER.get_states())

    def apply(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            _set_cuda_rng_state(self.cuda)
        # A copy: fork() during the recompute must not advance the snapshot itself.
        _CUDA_RNG_STATE_TRACKER.set_states(copy.copy(self.tracker))

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Runs the body on this snapshot's states, then puts the current ones back."""
        current = RNGSnapshot.capture(init_cuda=self.cuda is not None)
        self.apply()
        try:
            yield
        finally:
            current.apply()

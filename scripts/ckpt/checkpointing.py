"""Drop-in for `deepspeed.checkpointing`, backed by libckpt.

Replace `from deepspeed import checkpointing` with `from ckpt import checkpointing`:
the functions, their arguments, the module-level settings and the semantics
are DeepSpeed's (non-tensor arguments, non-differentiable outputs, CPU/CUDA RNG
and the model-parallel tracker replayed so a recompute draws the same dropout
masks, `.grad()` refused by the reentrant variant).

Differences, by design:

* Checkpoint inputs are neither copied, nor partitioned, nor swapped through
  `tensor.data`. The forward of each checkpoint runs inside a libckpt region,
  so what it returns (the next checkpoint's input) is offloaded by the library
  at its own address once the next region has closed, and is restored (with a
  prefetch of the region before) right before the recompute that needs it.
  Views and aliases of checkpoint inputs therefore stay valid.
* Where inputs go is libckpt's CKPT_MODE (host memory by default):
  `cpu_checkpointing` asks for exactly that and needs no `partition_activations`.
* `partition_activations` is libckpt's peer partitioning (CKPT_MODE=peer:
  slices on the device, peer+host: slices in host memory): each
  tensor-parallel rank keeps 1/P of every offloaded activation and the whole
  is all-gathered before backward, for any size. configure(mpu_) joins the
  tensor-parallel group of the mpu to libckpt's peer group (rank 0 makes the
  NCCL id, torch.distributed broadcasts it in the group, every rank joins);
  libckpt itself has to run in a peer mode (ckpt-run --mode peer), else a
  warning says where the activations go instead.
* `contiguous_memory_optimization` is checked as DeepSpeed checks it; libckpt
  preallocates its slice buffers with CKPT_CONTIGUOUS=1 and
  CKPT_NUMBER_CHECKPOINTS in its environment (read when it starts).
* Arguments are not moved to the current CUDA device; the function runs on them
  where they are. The autocast state of the forward is re-entered for the
  recompute.
* Without libckpt in the process, checkpoints still recompute (plain activation
  checkpointing); a warning says once that nothing is offloaded.
* Configuration mistakes raise ConfigError naming the key: both a ValueError
  and an AssertionError (what DeepSpeed raises), with DeepSpeed's wording
  where it has one ("Must specify the number of layers ...").
* Without CUDA, the "CUDA" RNG state is the CPU generator's (see ckpt.rng).
* The partition helpers (partition_activations(), gather_...()) are kept for
  their names and work on their own, but the checkpoints do not use them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from typing import Any, List

import torch

from . import api, dsconfig, library, recompute
from .dsconfig import ConfigError
from .errors import PeerError
from .rng import (  # noqa: F401  (re-exported, as DeepSpeed's module has them)
    _CUDA_RNG_STATE_TRACKER,
    _MODEL_PARALLEL_RNG_TRACKER_NAME,
    CudaRNGStatesTracker,
    RNGSnapshot,
    _set_cuda_rng_state,
    device_manual_seed,
    get_cuda_rng_tracker,
)
from .rng import _mirror as _rng_mirror
from .rng import mirror_off as _rng_mirror_off
from .tensor_args import detach_variable, extract_tensors, merge_tensors  # noqa: F401

logger = logging.getLogger(__name__)

# ---- module state, under DeepSpeed's names (code reads these) ---------------

deepspeed_checkpointing_enabled = False
mpu = None
mp_rank = None
mp_size = None
mp_group = None
num_layers = None
# DeepSpeed's contiguous buffers; ckpt keeps none, they stay empty.
contiguous_data_buffers: List[Any] = []
data_offsets: List[int] = []
contiguous_size_buffers: List[Any] = []
size_offsets: List[int] = []
# DeepSpeed-like timers once `profile` has timed something: timers("fwd") and
# timers("backward"), each with start(), stop(), reset(), elapsed().
timers = None

PARTITION_ACTIVATIONS = False
CPU_CHECKPOINT = False
CONTIGUOUS_CHECKPOINTING = False
SYNCHRONIZE = False
PROFILE_TIME = False

# libckpt copies on a stream of its own: transport_stream stays None.
transport_stream = None
# "cuda:N" (or "cpu" without CUDA) once a checkpoint has run.
cuda_device = None

PEER_PARTITIONING_AVAILABLE = True
# (size, rank) of the peer group configure() joined this process to, or None.
peer_group = None


class ArgumentError(ValueError, AssertionError):
    """A bad argument to a partition helper (DeepSpeed asserts there)."""

_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


PEER_MODES = ("peer", "peer+host")


def _warn_partition() -> None:
    """partition_activations without libckpt in a peer mode: say where inputs go."""
    if "partition" in _warned:  # called before every checkpoint: ask libckpt once
        return
    lib = library.get_or_none()
    if lib is None:
        _warn_once("partition", "ckpt: partition_activations asks for peer partitioning, but libckpt is not "
                   "loaded (run under scripts/ckpt-run --mode peer, or LD_PRELOAD=libckpt.so with "
                   "CKPT_MODE=peer): checkpoints recompute, nothing is partitioned")
        return
    in_effect = (lib.ckpt_mode() or b"none").decode()
    if in_effect not in PEER_MODES:
        where = "stay on the device" if in_effect == "none" else "are offloaded to host memory"
        _warn_once("partition", f"ckpt: partition_activations asks for peer partitioning, but the mode libckpt "
                   f"runs in is {in_effect!r} (CKPT_MODE; 'host' too after a peer group failed): set "
                   f"CKPT_MODE=peer (slices on the device) or peer+host (slices in host memory); until then "
                   f"checkpoint inputs {where}")


def _check_library() -> None:
    lib = library.get_or_none()
    if lib is None:
        _warn_once(
            "nolib",
            "ckpt: libckpt is not loaded (run under LD_PRELOAD=/path/to/libckpt.so or "
            "scripts/ckpt-run): checkpoints recompute, but nothing is offloaded",
        )
        return
    if CPU_CHECKPOINT:
        raw = lib.ckpt_mode()
        if (raw or b"none").decode() == "none":
            _warn_once("mode-none", "ckpt: cpu_checkpointing is on but libckpt runs with CKPT_MODE=none: "
                       "nothing is offloaded")


# ---- model parallelism and seeds --------------------------------------------


def _init_model_parallel_state() -> None:
    """mp_rank/mp_size/mp_group from the mpu, as DeepSpeed reads them."""
    global mp_rank, mp_size, mp_group
    if mp_rank is not None:
        return
    if mpu is None:
        mp_rank, mp_size, mp_group = 0, 1, None
    elif hasattr(mpu, "get_tensor_model_parallel_rank"):
        mp_rank = mpu.get_tensor_model_parallel_rank()
        mp_size = mpu.get_tensor_model_parallel_world_size()
        mp_group = mpu.get_tensor_model_parallel_group()
    else:
        mp_rank = mpu.get_model_parallel_rank()
        mp_size = mpu.get_model_parallel_world_size()
        mp_group = mpu.get_model_parallel_group()


def _tensor_parallel_rank(unit) -> int:
    if unit is None:
        return 0
    for getter in ("get_tensor_model_parallel_rank", "get_slice_parallel_rank", "get_model_parallel_rank"):
        if hasattr(unit, getter):
            return int(getattr(unit, getter)())
    return 0


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Seeds the device generator with `seed` (same on all tensor-parallel ranks: for
    dropout outside model-parallel regions) and adds the tracker state
    'model-parallel-rng' seeded seed + 2718 + tensor-parallel rank (different on
    each: for dropout inside them). Call once, after model parallelism is set up,
    instead of torch.cuda.manual_seed."""
    tp_rank = _tensor_parallel_rank(mpu)
    model_parallel_seed = seed + 2718 + tp_rank
    logger.info("ckpt: tensor-parallel rank %d: model-parallel seed %d, data-parallel seed %d",
                tp_rank, model_parallel_seed, seed)
    with _rng_mirror_off():
        _CUDA_RNG_STATE_TRACKER.reset()
        device_manual_seed(seed)
        _CUDA_RNG_STATE_TRACKER.add(_MODEL_PARALLEL_RNG_TRACKER_NAME, model_parallel_seed)
    # libckpt's tracker too: its cuRAND generators take the default state
    # (seed, offset 0) and the same "model-parallel-rng" state.
    _rng_mirror("ckpt_rng_model_parallel_seed", seed, tp_rank)


def model_parallel_reconfigure_tp_seed(seed: int) -> None:
    """Re-seeds only the tracker state 'model-parallel-rng' with seed + 2718 +
    tensor-parallel rank (after the tensor-parallel layout changed); the default
    device generator keeps its state. The state must exist
    (model_parallel_cuda_manual_seed adds it)."""
    tp_rank = _tensor_parallel_rank(mpu)
    model_parallel_seed = seed + 2718 + tp_rank
    logger.info("ckpt: tensor-parallel rank %d: model-parallel seed reconfigured to %d", tp_rank,
                model_parallel_seed)
    with _CUDA_RNG_STATE_TRACKER.fork():
        device_manual_seed(model_parallel_seed)


# ---- partition helpers (kept for their names; the checkpoints do not use them) ----


def is_activation_to_checkpoint(item) -> bool:
    """A floating-point tensor with at least one element per model-parallel rank."""
    return torch.is_tensor(item) and item.is_floating_point() and item.numel() >= (mp_size or 1)


def get_partition_size(item) -> int:
    """Elements of `item` in each model-parallel rank's slice."""
    _init_model_parallel_state()
    if item.numel() % mp_size:
        raise ArgumentError(f"cannot partition {item.numel()} elements over {mp_size} ranks")
    return item.numel() // mp_size


def get_partition_start(item) -> int:
    """Offset of this rank's slice of `item`, flattened."""
    return get_partition_size(item) * mp_rank


def partition_activations(args, cpu_checkpoint: bool, contiguous_checkpoint: bool):
    """This rank's flat slice of each activation in `args` (moved to the CPU when
    cpu_checkpoint); other arguments as they are. contiguous_checkpoint is
    ignored: ckpt keeps no contiguous buffers."""
    out = []
    for item in args:
        if not is_activation_to_checkpoint(item):
            out.append(item)
            continue
        flat = item.detach().contiguous().view(-1)
        part = flat.narrow(0, get_partition_start(item), get_partition_size(item)).clone()
        out.append(part.cpu() if cpu_checkpoint else part)
    return out


def get_partitioned_activations_for_backward(args, inputs, contiguous_checkpoint: bool):
    """[slice-or-argument, size tensor (None for non-tensors)] pairs, flattened, as
    gather_partitioned_activations() takes them. The slice is returned itself:
    unlike DeepSpeed, `arg.data` is not swapped."""
    out = []
    for arg, part in zip(args, inputs):
        size = torch.tensor(arg.size()) if torch.is_tensor(arg) else None
        out.append(part if is_activation_to_checkpoint(arg) else arg)
        out.append(size)
    return out


def get_cpu_activations_for_backward(args, inputs):
    """The CPU copies for activations, the arguments otherwise (no `.data` swap)."""
    return [part if is_activation_to_checkpoint(arg) else arg for arg, part in zip(args, inputs)]


def gather_partitioned_activations(tensors, device=None):
    """Rebuilds full activations from (slice, size) pairs: an all-gather over the
    model-parallel group when there is one, a reshape otherwise."""
    if len(tensors) % 2:
        raise ArgumentError(f"expected (tensor, size) pairs, got {len(tensors)} items")
    _init_model_parallel_state()
    out = []
    for item, size in zip(tensors[0::2], tensors[1::2]):
        if not is_activation_to_checkpoint(item):
            out.append(item)
            continue
        shape = [int(n) for n in size.tolist()]
        if device is not None:
            item = item.to(device)
        if mp_group is None or mp_size == 1:
            out.append(item.view(shape))
            continue
        import torch.distributed as dist

        full = torch.empty(item.numel() * mp_size, dtype=item.dtype, device=item.device)
        dist.all_gather_into_tensor(full, item.contiguous().view(-1), group=mp_group)
        out.append(full.view(shape))
    return tuple(out)


# ---- the checkpoints ----------------------------------------------------------


FORWARD_GLOBAL_TIMER = "fwd"  # DeepSpeed's name of the checkpoint-forward timer
BACKWARD_TIMER = "backward"


class _Timer:
    """One named wall-clock timer, as DeepSpeed's: start(), stop(), reset(),
    elapsed(reset=True) in milliseconds, mean() per start/stop pair."""

    def __init__(self, name: str) -> None:
        self.name_ = name
        self.started_ = False
        self.start_time = 0.0
        self.elapsed_ = 0.0  # seconds, accumulated since the last reset
        self.count = 0
        self.total_ = 0.0  # seconds, never reset (for mean())
        self.total_count = 0

    def start(self) -> None:
        if self.started_:
            raise RuntimeError(f"timer {self.name_} has already been started")
        self.start_time = time.perf_counter()
        self.started_ = True

    def stop(self, reset: bool = False, record: bool = False) -> None:
        if not self.started_:
            raise RuntimeError(f"timer {self.name_} is not started")
        seconds = time.perf_counter() - self.start_time
        if reset:
            self.elapsed_ = 0.0
            self.count = 0
        self.elapsed_ += seconds
        self.count += 1
        self.total_ += seconds
        self.total_count += 1
        self.started_ = False

    def reset(self) -> None:
        self.started_ = False
        self.elapsed_ = 0.0
        self.count = 0

    def elapsed(self, reset: bool = True) -> float:
        """Milliseconds accumulated since the last reset (a running timer counts
        up to now); reset=True starts the count again."""
        running = self.started_
        ms = self.elapsed_ * 1e3
        if running:
            ms += (time.perf_counter() - self.start_time) * 1e3
        if reset:
            self.elapsed_ = 0.0
            self.count = 0
            if running:
                self.start_time = time.perf_counter()
        return ms

    def mean(self) -> float:
        """Mean milliseconds per start/stop pair since the timer was made."""
        return self.total_ * 1e3 / self.total_count if self.total_count else 0.0


class _Timers:
    """DeepSpeed's timer group: timers(name) makes or returns a _Timer;
    log(names) logs their elapsed milliseconds. `seconds` and `calls` total
    the checkpoint phases ("forward", "backward") since the first one."""

    def __init__(self) -> None:
        self.timers = {}
        self.seconds = {"forward": 0.0, "backward": 0.0}
        self.calls = {"forward": 0, "backward": 0}

    def __call__(self, name: str) -> _Timer:
        if name not in self.timers:
            self.timers[name] = _Timer(name)
        return self.timers[name]

    def get_timers(self):
        return self.timers

    def has_timer(self, name: str) -> bool:
        return name in self.timers

    def log(self, names, normalizer: float = 1.0, reset: bool = True, memory_breakdown: bool = False,
            ranks=None) -> str:
        assert normalizer > 0.0
        parts = [f"{n}: {self.timers[n].elapsed(reset=reset) / normalizer:.2f}" for n in names if n in self.timers]
        line = "time (ms) | " + " | ".join(parts)
        logger.info("ckpt: %s", line)
        return line

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
        self.calls[phase] += 1


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def _boundary(phase: str):
    """`synchronize` and `profile` around a checkpoint's forward or backward."""
    global timers
    if SYNCHRONIZE or PROFILE_TIME:
        _synchronize()
    timer = None
    if PROFILE_TIME:
        if timers is None:
            timers = _Timers()
        timer = timers(FORWARD_GLOBAL_TIMER if phase == "forward" else BACKWARD_TIMER)
        if timer.started_:  # a nested checkpoint: the outer one times it
            timer = None
        else:
            timer.start()
    start = time.perf_counter()
    try:
        yield
        if SYNCHRONIZE or PROFILE_TIME:
            _synchronize()
    except BaseException:
        if timer is not None:  # a failed checkpoint is not timed, and leaves no timer running
            timer.started_ = False
        raise
    if PROFILE_TIME:
        seconds = time.perf_counter() - start
        timers.add(phase, seconds)
        if timer is not None:
            timer.stop()
        logger.info("ckpt: checkpoint %s %.3f ms", phase, seconds * 1e3)


def _before_forward() -> bool:
    """Once-per-process setup and warnings; whether this forward gets a region."""
    global cuda_device
    if cuda_device is None:
        cuda_device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        logger.info(
            "ckpt: activation checkpointing: partition_activations=%s cpu_checkpointing=%s "
            "contiguous=%s (%s layers) synchronize=%s profile=%s",
            PARTITION_ACTIVATIONS, CPU_CHECKPOINT, CONTIGUOUS_CHECKPOINTING, num_layers,
            SYNCHRONIZE, PROFILE_TIME,
        )
    _init_model_parallel_state()
    if PARTITION_ACTIVATIONS:
        _warn_partition()
    if torch.is_grad_enabled():
        _check_library()
    return recompute.regions_wanted()


class _AutocastState:
    """Autocast settings of the forward, re-entered for the recompute."""

    def __init__(self) -> None:
        self.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.enabled = {d: torch.is_autocast_enabled(d) for d in self.devices}
        self.dtype = {d: torch.get_autocast_dtype(d) for d in self.devices}
        self.cache = torch.is_autocast_cache_enabled()

    def enter(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for d in self.devices:
            stack.enter_context(torch.autocast(d, enabled=self.enabled[d], dtype=self.dtype[d],
                                               cache_enabled=self.cache))
        return stack


class _Call:
    """What checkpoint() and CheckpointFunction share about one call."""

    __slots__ = ("name", "active", "outputs")

    def __init__(self, name: str, active: bool):
        self.name = name
        self.active = active
        self.outputs: List[Any] = []


def _flatten_outputs(outputs) -> List[Any]:
    if torch.is_tensor(outputs):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return list(outputs)
    return [outputs]


def _result(outputs: List[Any]):
    """DeepSpeed's return convention: the single output, else a tuple."""
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


class CheckpointFunction(torch.autograd.Function):
    """The reentrant checkpoint. Forward: runs the function without recording, in
    a libckpt region, keeping the inputs and the RNG/autocast state. Backward:
    restores the inputs, recomputes with recording on the same RNG/autocast
    state, and back-propagates through the recomputed graph."""

    @staticmethod
    def forward(ctx, run_function, call: _Call, *args):
        with _boundary("forward"):
            ctx.run_function = run_function
            ctx.rng = RNGSnapshot.capture()
            ctx.autocast = _AutocastState()
            tensors, others, flags = extract_tensors(args)
            ctx.save_for_backward(*tensors)
            ctx.non_tensor_args = others
            ctx.tensor_flags = flags
            with torch.no_grad(), recompute.forward_region(call.name, call.active) as region_id:
                outputs = run_function(*args)
            ctx.region_id = region_id
        call.outputs = _flatten_outputs(outputs)
        returned = [o for o in call.outputs if torch.is_tensor(o)]
        ctx.mark_non_differentiable(*[t for t in returned if not t.is_floating_point()])
        return tuple(returned)

    @staticmethod
    def backward(ctx, *grads):
        if not torch.autograd._is_checkpoint_valid():
            raise RuntimeError("Checkpointing is not compatible with .grad(), please use .backward() if possible")
        with _boundary("backward"):
            saved = ctx.saved_tensors
            recompute.restore_tensors(saved)
            inputs = merge_tensors(detach_variable(tuple(saved)), ctx.non_tensor_args, ctx.tensor_flags)
            with recompute.recompute_scope(), ctx.rng.replay(), recompute.replay_region(ctx.region_id), \
                    ctx.autocast.enter(), torch.enable_grad():
                outputs = ctx.run_function(*inputs)
            recomputed = [o for o in _flatten_outputs(outputs) if torch.is_tensor(o)]
            pairs = [(o, g) for o, g in zip(recomputed, grads) if o.requires_grad]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            ctx.run_function = None
            ctx.non_tensor_args = None
        return (None, None) + tuple(x.grad if torch.is_tensor(x) else None for x in inputs)


class _WithKeywords:
    """function(*args, **kwargs) as a function of positional arguments only:
    the keyword values follow the positional ones, so tensor keyword arguments
    are saved, restored and get gradients like positional ones."""

    def __init__(self, function, npositional: int, keys):
        self.function = function
        self.npositional = npositional
        self.keys = tuple(keys)

    def __call__(self, *flat):
        n = self.npositional
        return self.function(*flat[:n], **dict(zip(self.keys, flat[n:])))


def checkpoint(function, *args, **kwargs):
    """Runs function(*args, **kwargs) without keeping its activations; backward
    recomputes them (reentrant). Tensor keyword arguments get gradients like
    positional ones (DeepSpeed >= 0.19.4). Returns what function returns: one
    output as is, several (or a list) as a tuple."""
    name = "checkpoint:" + recompute.name_of(function)
    if kwargs:
        function = _WithKeywords(function, len(args), kwargs)
        args = args + tuple(kwargs.values())
    call = _Call(name, _before_forward())
    returned = iter(CheckpointFunction.apply(function, call, *args))
    return _result([next(returned) if torch.is_tensor(o) else o for o in call.outputs])


def _torch_checkpoint():
    import torch.utils.checkpoint as tuc

    fn = tuc.checkpoint
    return getattr(fn, "__ckpt_original__", fn)


def non_reentrant_checkpoint(function, *args, **kwargs):
    """checkpoint() through autograd's saved-tensor hooks instead of a reentrant
    backward: works when no input requires grad, and with `.grad()`. Keyword
    arguments are passed to function as they are."""
    active = _before_forward()
    wrapped = recompute.RegionFunction(function, "checkpoint:" + recompute.name_of(function), active,
                                       replay_rng=True)
    with _boundary("forward"):
        outputs = _torch_checkpoint()(wrapped, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
    return _result(_flatten_outputs(outputs))


# ---- the peer group -------------------------------------------------------------


def _peer_timeout_s() -> float:
    """CKPT_PEER_TIMEOUT_MS (libckpt's bound on the bootstrap), in seconds."""
    raw = os.environ.get("CKPT_PEER_TIMEOUT_MS", "")
    try:
        ms = int(raw) if raw else 60000
    except ValueError:
        ms = 60000
    return max(ms, 100) / 1000.0


def _make_device_current() -> None:
    """The context of torch's current CUDA device current on this thread (libckpt
    joins the group on the device whose context is current; call
    torch.cuda.set_device(local_rank) before configure). Without CUDA in torch,
    the thread's context is the caller's business."""
    if torch.cuda.is_available():
        device = torch.cuda.current_device()
        torch.cuda.set_device(device)
        torch.cuda.synchronize(device)  # cudart binds the primary context to this thread


def _broadcast_id(payload: "torch.Tensor", group, rank: int, timeout_s: float) -> None:
    """Broadcasts payload from the group's rank 0, waiting at most timeout_s."""
    import torch.distributed as dist

    src = dist.get_global_rank(group, 0) if group is not None else 0
    work = dist.broadcast(payload, src=src, group=group, async_op=True)
    deadline = time.monotonic() + timeout_s
    while not work.is_completed():
        if time.monotonic() > deadline:
            what = ("the peer group id was not taken by every other tensor-parallel rank" if rank == 0 else
                    f"the peer group id from tensor-parallel rank 0 (global rank {src}) did not arrive")
            raise PeerError(
                f"ckpt: configure() on tensor-parallel rank {rank}: {what} within "
                f"CKPT_PEER_TIMEOUT_MS={int(timeout_s * 1000)} ms: every rank of the tensor-parallel group "
                "must call configure() with partition_activations (or under CKPT_MODE=peer)")
        time.sleep(0.001)
    work.wait()


def _join_peer_group() -> None:
    """Joins the mpu's tensor-parallel group to libckpt's peer group (collective
    over that group). Bounded: the broadcast of the id is waited for
    CKPT_PEER_TIMEOUT_MS, and libckpt bounds the communicator's creation by the
    same (torch.distributed's own process-group timeout applies too)."""
    global peer_group
    lib = library.get_or_none()
    if lib is None:
        if PARTITION_ACTIVATIONS:
            _warn_partition()
        return
    in_effect = (lib.ckpt_mode() or b"none").decode()
    if in_effect not in PEER_MODES:
        if PARTITION_ACTIVATIONS:
            _warn_partition()
        return
    if peer_group is not None:
        return  # once per process: libckpt keeps its group
    if mpu is None:
        if not os.environ.get("CKPT_PEER_SIZE"):
            _warn_once("peer-nompu", f"ckpt: CKPT_MODE={in_effect} needs a peer group: pass configure() the mpu "
                       "(its tensor-parallel group), or set CKPT_PEER_SIZE, CKPT_PEER_RANK and "
                       "CKPT_PEER_ID_FILE; until then offloads go to host memory")
        return
    import torch.distributed as dist

    _init_model_parallel_state()
    size, rank, group = int(mp_size), int(mp_rank), mp_group
    if size > 1 and not dist.is_initialized():
        raise PeerError("ckpt: configure(): the mpu's tensor-parallel group has "
                        f"{size} ranks but torch.distributed is not initialised (init_process_group first)")
    if size == 1:
        _warn_once("peer-one", f"ckpt: the tensor-parallel group has 1 rank: CKPT_MODE={in_effect} keeps each "
                   "activation whole (peer: on the device, nothing saved; peer+host: all of it in host memory); "
                   "partitioning saves (P-1)/P with P > 1 tensor-parallel ranks")
    timeout_s = _peer_timeout_s()
    made = b""
    failure = None
    if rank == 0:
        try:
            made = api.peer_unique_id()
        except PeerError as exc:
            failure = exc
    # Broadcast in any group torch.distributed has, one rank included (the same path).
    if size > 1 or (group is not None and dist.is_initialized()):
        backend = str(dist.get_backend(group))
        on_cuda = "gloo" not in backend and torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
        payload = torch.zeros(1 + api.PEER_ID_BYTES, dtype=torch.uint8)
        if rank == 0 and failure is None:
            payload[0] = 1
            payload[1:] = torch.frombuffer(bytearray(made), dtype=torch.uint8)
        payload = payload.to(device)
        _broadcast_id(payload, group, rank, timeout_s)
        payload = payload.cpu()
        if failure is None and int(payload[0]) != 1:
            raise PeerError("ckpt: configure(): tensor-parallel rank 0 could not make the peer group id (see its "
                            "error): no peer group")
        made = bytes(payload[1:].tolist())
    if failure is not None:
        raise failure
    _make_device_current()
    api.peer_init(made, size, rank)
    peer_group = (size, rank)
    logger.info("ckpt: peer group joined: tensor-parallel rank %d of %d, CKPT_MODE=%s", rank, size, in_effect)


# ---- configuration -------------------------------------------------------------


def partition_activations_in_checkpoint(partition_activation: bool) -> None:
    """Sets partition_activations (see the module doc; the peer group is joined by configure())."""
    global PARTITION_ACTIVATIONS
    PARTITION_ACTIVATIONS = dsconfig.check_bool("partition_activations", partition_activation)
    logger.info("ckpt: partition_activations=%s", PARTITION_ACTIVATIONS)
    if PARTITION_ACTIVATIONS:
        _warn_partition()


def set_num_layers(nlayers) -> None:
    """Number of checkpoints per forward (DeepSpeed sizes contiguous buffers with it)."""
    global num_layers
    num_layers = nlayers


def reset() -> None:
    """Drops the contiguous buffers (DeepSpeed: call between forwards that have no
    backward). ckpt keeps none, so this only empties the compatibility lists."""
    global contiguous_data_buffers, contiguous_size_buffers, data_offsets, size_offsets
    contiguous_data_buffers = []
    contiguous_size_buffers = []
    data_offsets = []
    size_offsets = []


def _configure_defaults() -> None:
    global num_layers, deepspeed_checkpointing_enabled
    global PARTITION_ACTIVATIONS, CONTIGUOUS_CHECKPOINTING, CPU_CHECKPOINT, SYNCHRONIZE, PROFILE_TIME
    PARTITION_ACTIVATIONS = False
    CONTIGUOUS_CHECKPOINTING = False
    num_layers = None
    CPU_CHECKPOINT = False
    SYNCHRONIZE = False
    PROFILE_TIME = False
    deepspeed_checkpointing_enabled = True


def _configure_using_config_file(config, mpu=None) -> None:
    """Applies the activation_checkpointing section of a DeepSpeed config."""
    global num_layers
    global PARTITION_ACTIVATIONS, CONTIGUOUS_CHECKPOINTING, CPU_CHECKPOINT, SYNCHRONIZE, PROFILE_TIME
    section = dsconfig.parse(config)
    logger.info("ckpt: %s", section)
    PARTITION_ACTIVATIONS = section.partition_activations
    CONTIGUOUS_CHECKPOINTING = section.contiguous_memory_optimization
    num_layers = section.number_checkpoints
    CPU_CHECKPOINT = section.cpu_checkpointing
    SYNCHRONIZE = section.synchronize_checkpoint_boundary
    PROFILE_TIME = section.profile


def configure(
    mpu_,
    deepspeed_config=None,
    partition_activations=None,
    contiguous_checkpointing=None,
    num_checkpoints=None,
    checkpoint_in_cpu=None,
    synchronize=None,
    profile=None,
) -> None:
    """Configures activation checkpointing, as deepspeed.checkpointing.configure does.

    mpu_: None, or an object with get_(tensor_)model_parallel_rank/world_size/group.
    deepspeed_config: a DeepSpeed JSON config (path or dict); its
        activation_checkpointing section is applied first.
    The keyword arguments override it: partition_activations,
    contiguous_checkpointing (contiguous_memory_optimization), num_checkpoints
    (number_checkpoints), checkpoint_in_cpu (cpu_checkpointing), synchronize
    (synchronize_checkpoint_boundary), profile. A mistake raises ConfigError
    (a ValueError and an AssertionError) naming the key, and leaves the previous
    configuration in place.

    With partition_activations, or when libckpt runs in CKPT_MODE=peer /
    peer+host, the mpu's tensor-parallel group becomes libckpt's peer group, once
    per process: every rank of that group must call configure() (it is
    collective), after torch.distributed.init_process_group (gloo or nccl; under
    torchrun across nodes too) and torch.cuda.set_device. Tensor-parallel rank 0
    makes the NCCL id, a torch.distributed broadcast in the group hands it to the
    others, and each joins on its current device. Bounded by
    CKPT_PEER_TIMEOUT_MS (default 60 s): a rank that never arrives makes the
    others raise PeerError instead of waiting. PeerError too when the group
    cannot be made (the message says why); a warning when libckpt is not loaded
    or runs in another mode, or when the group has one rank (nothing to split).
    """
    global mpu, mp_rank, mp_size, mp_group, num_layers
    global PARTITION_ACTIVATIONS, CONTIGUOUS_CHECKPOINTING, CPU_CHECKPOINT, SYNCHRONIZE, PROFILE_TIME

    settings = dsconfig.ActivationCheckpointingConfig()
    if deepspeed_config is not None:
        settings = dsconfig.parse(deepspeed_config)
    overrides = (
        ("partition_activations", "partition_activations", partition_activations),
        ("contiguous_memory_optimization", "contiguous_checkpointing", contiguous_checkpointing),
        ("cpu_checkpointing", "checkpoint_in_cpu", checkpoint_in_cpu),
        ("synchronize_checkpoint_boundary", "synchronize", synchronize),
        ("profile", "profile", profile),
    )
    for key, argument, value in overrides:
        if value is not None:
            setattr(settings, key, dsconfig.check_bool(argument, value))
    if num_checkpoints is not None:
        settings.number_checkpoints = dsconfig.check_count("num_checkpoints", num_checkpoints)
    if settings.contiguous_memory_optimization and not settings.partition_activations:
        raise ConfigError("Contiguous Checkpointing is only available with partitioned activations: "
                          "contiguous_memory_optimization (contiguous_checkpointing) needs "
                          "partition_activations")
    if settings.contiguous_memory_optimization and settings.number_checkpoints is None:
        raise ConfigError("Must specify the number of layers with contiguous memory checkpointing: "
                          "contiguous_memory_optimization (contiguous_checkpointing) needs "
                          "number_checkpoints (num_checkpoints)")

    _configure_defaults()
    if mpu_ is not None and mpu_ is not mpu:
        mpu = mpu_
        mp_rank = mp_size = mp_group = None
    PARTITION_ACTIVATIONS = settings.partition_activations
    CONTIGUOUS_CHECKPOINTING = settings.contiguous_memory_optimization
    num_layers = settings.number_checkpoints
    CPU_CHECKPOINT = settings.cpu_checkpointing
    SYNCHRONIZE = settings.synchronize_checkpoint_boundary
    PROFILE_TIME = settings.profile
    # partition_activations / CKPT_MODE=peer: the tensor-parallel group becomes
    # libckpt's peer group now (collective over it).
    _join_peer_group()
    # profile / synchronize_checkpoint_boundary are the library's CKPT_PROFILE
    # / CKPT_SYNC, switched at run time: per-region device times land in the
    # stats (ckpt-stats), synchronisation happens at region boundaries.
    lib = library.get_or_none()
    if lib is not None and (PROFILE_TIME or SYNCHRONIZE):
        lib.ckpt_profile_set(int(bool(PROFILE_TIME)), int(bool(SYNCHRONIZE)))


def is_configured() -> bool:
    """True once configure() has been called."""
    return deepspeed_checkpointing_enabled

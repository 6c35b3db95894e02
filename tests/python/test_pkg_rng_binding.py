"""The package and libckpt's RNG API: the recompute runs between
ckpt_region_replay_begin/end, the tracker is mirrored into libckpt's named
states, and a cuRAND generator (the simulated libcurand.so.10, through ctypes)
draws the same numbers in a checkpoint's recompute as in its forward."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import BUILD_DIR, SCRIPTS, child_env, run_python

from ckpt import checkpointing as cp
from ckpt import library, recompute, rng

VARIANTS = {"reentrant": cp.checkpoint, "non_reentrant": cp.non_reentrant_checkpoint}
SIMDEV = BUILD_DIR / "tests" / "simdev"


class Recorder:
    """Fake bound library: regions, and the RNG calls in order."""

    def __init__(self):
        self.calls = []
        self.ids = 0
        self.open = []
        self.replaying = None

    def ckpt_region_begin(self, name):
        self.ids += 1
        self.open.append(self.ids)
        return self.ids

    def ckpt_region_end(self):
        return self.open.pop()

    def ckpt_restore_ptr(self, ptr):
        return -2

    def ckpt_set_stream(self, stream):
        return 0

    def ckpt_mode(self):
        return b"host"

    def ckpt_region_replay_begin(self, region):
        self.calls.append(("replay_begin", region))
        self.replaying = region
        return 0

    def ckpt_region_replay_end(self):
        self.calls.append(("replay_end",))
        self.replaying = None
        return 0

    def ckpt_rng_add(self, name, seed):
        self.calls.append(("add", name.decode(), seed))
        return 0

    def ckpt_rng_fork(self, name):
        self.calls.append(("fork", name.decode()))
        return 0

    def ckpt_rng_unfork(self):
        self.calls.append(("unfork",))
        return 0

    def ckpt_rng_reset(self):
        self.calls.append(("reset",))
        return 0

    def ckpt_rng_model_parallel_seed(self, seed, tp_rank):
        self.calls.append(("mp_seed", seed, tp_rank))
        return 0


@pytest.fixture
def recorder(monkeypatch):
    r = Recorder()
    monkeypatch.setattr(library, "_library", r)
    yield r
    rng.get_cuda_rng_tracker().reset()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_recompute_runs_inside_a_replay_of_its_region(variant, recorder):
    seen = []

    def probe(block, h):
        seen.append((recompute.recomputing(), recorder.replaying))
        return block(h)

    block = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8, requires_grad=True)
    VARIANTS[variant](probe, block, x).sum().backward()
    assert seen == [(False, None), (True, 1)], seen
    assert recorder.calls == [("replay_begin", 1), ("replay_end",)]


def test_the_tracker_is_mirrored_and_keeps_its_own_behaviour(recorder):
    tracker = rng.get_cuda_rng_tracker()
    tracker.add("mp", 77)
    with pytest.raises(Exception, match="already exists"):
        tracker.add("mp", 78)
    before = rng.get_device_rng_state()
    with tracker.fork("mp"):
        torch.rand(3)
    assert torch.equal(rng.get_device_rng_state(), before)
    tracker.reset()
    assert recorder.calls == [("add", "mp", 77), ("fork", "mp"), ("unfork",), ("reset",)]
    # Other tracker instances are not the process's: not mirrored.
    recorder.calls.clear()
    rng.CudaRNGStatesTracker().add("private", 5)
    assert recorder.calls == []


def test_model_parallel_seed_is_one_call_into_libckpt(recorder, monkeypatch):
    monkeypatch.setattr(cp, "_tensor_parallel_rank", lambda mpu: 3)
    cp.model_parallel_cuda_manual_seed(100)
    assert recorder.calls == [("mp_seed", 100, 3)]
    assert set(rng.get_cuda_rng_tracker().get_states()) == {"model-parallel-rng"}


def test_a_failing_libckpt_answer_does_not_change_python(recorder, monkeypatch):
    monkeypatch.setattr(recorder, "ckpt_rng_fork", lambda name: -2)  # CKPT_ENOENT: C never saw the add
    tracker = rng.get_cuda_rng_tracker()
    tracker.add("a", 1)
    with tracker.fork("a"):
        pass
    assert ("unfork",) not in recorder.calls, "unfork without a C fork"


# ---- against the real library and the simulated cuRAND -----------------------

CURAND_CHILD = textwrap.dedent("""
    import ctypes, json, torch
    from ckpt import checkpointing as cp, library
    lib = library.get()
    cur = ctypes.CDLL("libcurand.so.10")          # the simulated one (LD_LIBRARY_PATH)
    g = ctypes.c_void_p()
    assert cur.curandCreateGeneratorHost(ctypes.byref(g), 100) == 0   # XORWOW
    assert cur.curandSetPseudoRandomGeneratorSeed(g, ctypes.c_ulonglong(1234)) == 0
    draws = []

    def layer(x):
        buf = (ctypes.c_float * 8)()
        assert cur.curandGenerateUniform(g, buf, ctypes.c_size_t(8)) == 0
        r = torch.tensor(list(buf))
        draws.append(r)
        return x * r

    out = {}
    for name, fn in (("reentrant", cp.checkpoint), ("non_reentrant", cp.non_reentrant_checkpoint)):
        draws.clear()
        x = torch.ones(8, requires_grad=True)
        fn(layer, x).sum().backward()
        out[name] = {"calls": len(draws), "replayed": torch.equal(draws[0], draws[1]),
                     "grad_is_forward_draw": torch.equal(x.grad, draws[0])}
    # The tracker is mirrored: C knows the model-parallel state.
    cp.model_parallel_cuda_manual_seed(10)
    states = ctypes.c_void_p()
    assert lib.ckpt_rng_get_states(ctypes.byref(states)) == 0
    names = []
    for i in range(lib.ckpt_rng_states_count(states)):
        n, s = ctypes.c_char_p(), ctypes.c_ulonglong()
        assert lib.ckpt_rng_states_entry(states, i, ctypes.byref(n), ctypes.byref(s)) == 0
        names.append([n.value.decode(), s.value])
    lib.ckpt_rng_states_free(states)
    out["states"] = names
    out["dup_name"] = lib.ckpt_rng_add(b"model-parallel-rng", 1)
    out["dup_seed"] = lib.ckpt_rng_add(b"other", 10 + 2718)
    out["fork_unknown"] = lib.ckpt_rng_fork(b"nope")
    print(json.dumps(out))
""")


@pytest.fixture
def simcurand():
    if not (SIMDEV / "libcurand.so.10").is_file():
        pytest.skip(f"the simulated cuRAND is not built at {SIMDEV}")
    return SIMDEV


def test_curand_draws_are_replayed_in_recomputes_under_the_preload(libckpt, simcurand):
    env = child_env(preload=libckpt, LD_LIBRARY_PATH=simcurand, CKPT_MODE="host", CKPT_DEBUG="ERROR")
    result = run_python(["-c", CURAND_CHILD], env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for name in VARIANTS:
        assert out[name] == {"calls": 2, "replayed": True, "grad_is_forward_draw": True}, (name, out)
    assert out["states"] == [["model-parallel-rng", 10 + 2718]]
    assert out["dup_name"] == -1 and out["dup_seed"] == -1  # CKPT_EINVAL
    assert out["fork_unknown"] == -2  # CKPT_ENOENT


def test_ckpt_run_sim_finds_the_simulated_curand(libckpt, simcurand):
    probe = ("import ctypes; ctypes.CDLL('libcurand.so.10'); "
             "print([l.split()[-1] for l in open('/proc/self/maps') if 'libcurand' in l][0])")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH", "CKPT_LIBRARY")}
    env.update(CKPT_BUILD_DIR=str(BUILD_DIR), CKPT_DEBUG="NONE")
    r = subprocess.run([str(SCRIPTS / "ckpt-run"), "--sim", "--quiet", "--", sys.executable, "-c", probe],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert os.path.realpath(r.stdout.strip().splitlines()[-1]) == os.path.realpath(simcurand / "libcurand.so.10")

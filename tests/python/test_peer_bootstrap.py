"""Peer partitioning from Python (issue 12): ckpt.checkpointing.configure(mpu_)
makes the mpu's tensor-parallel group libckpt's peer group.

Each rank is a child Python under LD_PRELOAD=libckpt.so on the simulated
device (its own, per process) and the simulated NCCL (libnccl.so.2 beside it,
shared memory between the ranks). torch.distributed runs with the gloo backend
on the CPU (a FileStore in the test's directory), so torch broadcasts the NCCL
id and the simulated NCCL moves the data. The tagged "activations" are device
buffers allocated through the driver (ctypes) inside libckpt regions, identical
on every rank as tensor-parallel copies are, and checked byte for byte after
the restore. Every child is bounded by a timeout; a hang is a failure.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import BUILD_DIR, child_env

SIMDEV = BUILD_DIR / "tests" / "simdev"

RANK = textwrap.dedent(r"""
    import ctypes, datetime, json, os, sys, time
    import torch
    import torch.distributed as dist

    rank, size, store, scenario = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    result = {"rank": rank}

    def done(**fields):
        result.update(fields)
        with open(f"{store}.rank{rank}.json", "w") as f:  # not stdout: libckpt's threads log there
            json.dump(result, f)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # no teardown of a process group with a collective left pending

    # The rank's device: the simulated driver, its primary context current.
    cu = ctypes.CDLL("libcuda.so.1")
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    assert cu.cuInit(0) == 0
    assert cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    assert cu.cuCtxSetCurrent(ctx) == 0

    if size > 1:
        dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=60))

    class MPU:  # Megatron's names: the whole world is one tensor-parallel group
        def get_tensor_model_parallel_rank(self):
            return rank
        def get_tensor_model_parallel_world_size(self):
            return size
        def get_tensor_model_parallel_group(self):
            return dist.group.WORLD if size > 1 else None

    import ckpt
    from ckpt import checkpointing as cp

    if scenario == "absent":  # this rank never calls configure(); it stays alive
        deadline = time.monotonic() + 60
        while not os.path.exists(store + ".over") and time.monotonic() < deadline:
            time.sleep(0.05)
        done(absent=True)

    try:
        cp.configure(MPU(), partition_activations=True)
    except ckpt.PeerError as exc:
        open(store + ".over", "w").close()
        done(error=str(exc))
    result["mode"] = ckpt.mode()
    result["peer_group"] = list(cp.peer_group)

    # Tensor-parallel copies: the same bytes on every rank. Sizes that divide
    # by P and sizes that do not.
    sizes = [2 << 20, (1 << 20) + 3, 777, 3 * 4096 * 5]
    def pattern(n, seed):
        g = torch.Generator().manual_seed(seed)
        return bytes(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).tolist())

    data = [pattern(n, 100 + i) for i, n in enumerate(sizes)]
    ptrs = []
    with ckpt.region("layer0") as first:
        for n, blob in zip(sizes, data):
            p = ctypes.c_uint64()
            assert cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(n)) == 0
            assert cu.cuMemcpyHtoD_v2(p, blob, ctypes.c_size_t(n)) == 0
            ptrs.append(p.value)
    with ckpt.region("layer1"):
        pass
    assert ckpt.offload(first.id)
    ckpt.wait(first.id)
    result["residency"] = [ckpt.query(p)[1] for p in ptrs]
    result["stats_offloaded"] = ckpt.stats()
    assert ckpt.restore(first.id)
    ckpt.wait(first.id)
    assert cu.cuCtxSynchronize() == 0
    result["residency_after"] = [ckpt.query(p)[1] for p in ptrs]
    exact = []
    for p, n, blob in zip(ptrs, sizes, data):
        back = ctypes.create_string_buffer(n)
        assert cu.cuMemcpyDtoH_v2(back, ctypes.c_uint64(p), ctypes.c_size_t(n)) == 0
        exact.append(back.raw == blob)
    result["exact"] = exact
    result["bytes"] = sum(sizes)
    for p in ptrs:
        assert cu.cuMemFree_v2(ctypes.c_uint64(p)) == 0
    if size > 1:
        dist.barrier()
        dist.destroy_process_group()
    done(stats_end=ckpt.stats())
""")


@pytest.fixture
def simulated(libckpt):
    if not (SIMDEV / "libcuda.so.1").is_file() or not (SIMDEV / "libnccl.so.2").is_file():
        pytest.skip(f"the simulated driver and NCCL are not built in {SIMDEV}")
    return libckpt


def run_ranks(tmp_path, libckpt, size, scenarios, mode="peer", timeout=120, rank_env=None, **extra):
    """Starts `size` ranks (scenario per rank), waits for all, bounded; returns
    [(returncode, result dict or None, output)] by rank."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    store = tmp_path / "store"
    settings = dict(LD_LIBRARY_PATH=SIMDEV, CKPT_MODE=mode, CKPT_OFFLOAD="manual", CKPT_MIN_BYTES="1",
                    CKPT_DEBUG="WARN", NVTX_INJECTION64_PATH="", SIMDEV_DEBUG="0", GLOO_SOCKET_IFNAME="lo",
                    CKPT_PEER_TIMEOUT_MS="20000", SIMNCCL_TIMEOUT_MS="20000")
    settings.update(extra)
    procs = []
    for rank in range(size):
        env = child_env(preload=libckpt, CKPT_DEBUG_FILE=tmp_path / f"ckpt-{rank}.log", **settings)
        env.update((rank_env or {}).get(rank, {}))
        procs.append(subprocess.Popen([sys.executable, str(script), str(rank), str(size), str(store),
                                       scenarios[rank]], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    out = []
    try:
        for rank, proc in enumerate(procs):
            text, _ = proc.communicate(timeout=timeout)
            log = tmp_path / f"ckpt-{rank}.log"
            text += log.read_text() if log.is_file() else ""
            found = tmp_path / f"store.rank{rank}.json"
            out.append((proc.returncode, json.loads(found.read_text()) if found.is_file() else None, text))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def check_partitioned(results, size, mode):
    for rc, res, text in results:
        assert rc == 0 and res is not None, text
        assert "error" not in res, text
        assert res["mode"] == mode and res["peer_group"] == [size, res["rank"]], res
        assert res["residency"] == ["peer"] * 4, (res, text)
        assert res["residency_after"] == ["device"] * 4, res
        assert res["exact"] == [True] * 4, res
        s = res["stats_offloaded"]
        # This rank holds its slices of every buffer (1/P each, padded), not the whole.
        assert s["offloads"] >= 1 and s["peer_bytes_in_use"] > 0, s
        if size > 1:
            assert s["peer_bytes_in_use"] < res["bytes"], s
        end = res["stats_end"]
        assert end["peer_bytes_in_use"] == 0 and end["peer_mismatches"] == 0 and end["peer_lost"] == 0, end
        assert end["restores"] >= 1, end


@pytest.mark.parametrize("mode", ["peer", "peer+host"])
def test_two_gloo_ranks_bootstrap_through_configure_and_restore_bit_exact(tmp_path, simulated, mode):
    results = run_ranks(tmp_path, simulated, 2, ["run", "run"], mode=mode)
    check_partitioned(results, 2, mode)


def test_a_group_of_one_rank_works_and_says_nothing_is_split(tmp_path, simulated):
    results = run_ranks(tmp_path, simulated, 1, ["run"])
    check_partitioned(results, 1, "peer")
    assert "tensor-parallel group has 1 rank" in results[0][2]


@pytest.mark.parametrize("absent", [0, 1])
def test_a_rank_that_never_calls_configure_makes_the_other_fail_clearly(tmp_path, simulated, absent):
    scenarios = ["absent" if r == absent else "run" for r in range(2)]
    results = run_ranks(tmp_path, simulated, 2, scenarios, CKPT_PEER_TIMEOUT_MS="1500",
                        SIMNCCL_TIMEOUT_MS="1500")
    rc, res, text = results[1 - absent]
    assert rc == 0 and res is not None, text
    message = res.get("error", "")
    assert "CKPT_PEER_TIMEOUT_MS" in message and "must call configure()" in message, (res, text)
    if absent == 0:  # rank 1 waits for the id that rank 0 never sends
        assert "from tensor-parallel rank 0 (global rank 0) did not arrive" in message, message
    else:  # rank 0 waits for rank 1 to take it (gloo's broadcast completes on both sides)
        assert "not taken by every other tensor-parallel rank" in message, message
    rc, res, text = results[absent]
    assert rc == 0 and res == {"rank": absent, "absent": True}, text


def test_a_rank_whose_nccl_cannot_load_fails_init_and_the_other_is_told(tmp_path, simulated):
    """Rank 0 cannot load NCCL: it broadcasts "no id" and fails; rank 1 says rank 0 could not make it."""
    missing = {"CKPT_NCCL_LIBRARY": str(tmp_path / "no-such-libnccl.so.2")}
    results = run_ranks(tmp_path, simulated, 2, ["run", "run"], rank_env={0: missing},
                        CKPT_PEER_TIMEOUT_MS="1500", SIMNCCL_TIMEOUT_MS="1500")
    (rc0, res0, text0), (rc1, res1, text1) = results
    assert rc0 == 0 and "ckpt_peer_unique_id failed" in res0.get("error", ""), text0
    assert "could not load NCCL" in res0["error"], res0
    assert rc1 == 0 and "rank 0 could not make the peer group id" in res1.get("error", ""), text1


def test_a_failed_join_is_a_clear_error_on_both_ranks(tmp_path, simulated):
    """Rank 1 cannot load NCCL at the join: its ckpt_peer_init fails at once, rank 0's times out."""
    missing = {"CKPT_NCCL_LIBRARY": str(tmp_path / "no-such-libnccl.so.2")}
    results = run_ranks(tmp_path, simulated, 2, ["run", "run"], rank_env={1: missing},
                        CKPT_PEER_TIMEOUT_MS="1500", SIMNCCL_TIMEOUT_MS="1500")
    for rank, (rc, res, text) in enumerate(results):
        assert rc == 0 and res is not None, text
        message = res.get("error", "")
        assert f"ckpt_peer_init (rank {rank} of 2) failed (CKPT_ESTATE)" in message, (message, text)
        assert "group could not be made" in message and "host memory" in message, message


def test_partition_activations_outside_a_peer_mode_warns_where_inputs_go(tmp_path, simulated):
    code = ("import warnings\nfrom ckpt import checkpointing as cp\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    cp.configure(None, partition_activations=True)\n"
            "print('WARN', [str(x.message) for x in w])\nprint('GROUP', cp.peer_group)\n")
    env = child_env(preload=simulated, LD_LIBRARY_PATH=SIMDEV, CKPT_MODE="host", CKPT_DEBUG="ERROR",
                    NVTX_INJECTION64_PATH="")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "runs in is 'host'" in r.stdout and "CKPT_MODE=peer" in r.stdout, r.stdout
    assert "GROUP None" in r.stdout


def test_configure_in_a_peer_mode_without_an_mpu_says_what_is_missing(tmp_path, simulated):
    code = ("import warnings\nfrom ckpt import checkpointing as cp\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    cp.configure(None)\n"
            "print('WARN', [str(x.message) for x in w])\n")
    env = child_env(preload=simulated, LD_LIBRARY_PATH=SIMDEV, CKPT_MODE="peer", CKPT_DEBUG="ERROR",
                    NVTX_INJECTION64_PATH="")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "needs a peer group" in r.stdout and "mpu" in r.stdout, r.stdout


PIN = textwrap.dedent(r"""
    import ctypes
    import ckpt
    cu = ctypes.CDLL("libcuda.so.1")
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    assert cu.cuInit(0) == 0 and cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0 and cu.cuCtxSetCurrent(ctx) == 0
    ptrs = []
    with ckpt.region("registered") as first:
        for _ in range(2):
            p = ctypes.c_uint64()
            assert cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 20)) == 0
            ptrs.append(p.value)
    with ckpt.region("next"):
        pass
    print("PIN", ckpt.pin(ptrs[0]), ckpt.pin(12345))
    ckpt.offload(first.id)
    ckpt.wait(first.id)
    print("RESIDENCY", ckpt.query(ptrs[0])[1], ckpt.query(ptrs[1])[1])
""")


def test_a_pinned_buffer_is_never_offloaded(simulated):
    env = child_env(preload=simulated, LD_LIBRARY_PATH=SIMDEV, CKPT_MODE="host", CKPT_OFFLOAD="manual",
                    CKPT_MIN_BYTES="1", CKPT_DEBUG="ERROR", NVTX_INJECTION64_PATH="")
    r = subprocess.run([sys.executable, "-c", PIN], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PIN True False" in r.stdout, r.stdout  # an untagged address: nothing to pin
    assert "RESIDENCY device host" in r.stdout, r.stdout


def test_pin_and_peer_calls_need_the_library():
    import ckpt
    from ckpt import library

    if library.get_or_none() is not None:
        pytest.skip("libckpt is loaded in the test process")
    for call in (lambda: ckpt.pin(4096), ckpt.peer_unique_id, lambda: ckpt.peer_init(bytes(128), 2, 0)):
        with pytest.raises(ckpt.LibraryNotLoaded):
            call()

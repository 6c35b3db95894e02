"""The RNG tracker behaves like DeepSpeed's (on the CPU generator when there is no CUDA)."""

import pytest
import torch

from ckpt import checkpointing as cp
from ckpt import rng


@pytest.fixture
def tracker():
    t = rng.CudaRNGStatesTracker()
    yield t
    rng.get_cuda_rng_tracker().reset()


def test_fork_draws_from_the_named_state_and_restores_the_outer_one(tracker):
    torch.manual_seed(7)
    outer_before = rng.get_device_rng_state()
    tracker.add("mp", 1000)
    assert torch.equal(rng.get_device_rng_state(), outer_before), "add() must not move the outer state"

    with tracker.fork("mp"):
        first = torch.rand(5, device="cuda" if torch.cuda.is_available() else "cpu")
    assert torch.equal(rng.get_device_rng_state(), outer_before), "fork() must restore the outer state"

    # The named state is the seed's stream, and it advanced.
    rng.device_manual_seed(1000)
    expected = torch.rand(10, device=first.device)
    rng.set_device_rng_state(outer_before)
    with tracker.fork("mp"):
        second = torch.rand(5, device=first.device)
    assert torch.equal(torch.cat([first, second]), expected)
    assert torch.equal(rng.get_device_rng_state(), outer_before)


def test_fork_restores_the_outer_state_on_exceptions(tracker):
    tracker.add("mp", 3)
    before = rng.get_device_rng_state()
    with pytest.raises(KeyError):
        with tracker.fork("mp"):
            torch.rand(3)
            raise KeyError("boom")
    assert torch.equal(rng.get_device_rng_state(), before)


def test_add_refuses_duplicate_names_and_duplicate_seeds(tracker):
    tracker.add("a", 1)
    with pytest.raises(Exception, match="seed 1 already exists"):
        tracker.add("b", 1)
    with pytest.raises(Exception, match="a already exists"):
        tracker.add("a", 2)
    tracker.add("b", 2)
    assert set(tracker.get_states()) == {"a", "b"}


def test_fork_of_an_unknown_name_is_refused(tracker):
    with pytest.raises(Exception, match="not added"):
        with tracker.fork("nope"):
            pass


def test_states_round_trip_and_reset(tracker):
    tracker.add("a", 11)
    saved = tracker.get_states()
    with tracker.fork("a"):
        torch.rand(3)
    assert not torch.equal(saved["a"], tracker.get_states()["a"]), "get_states() must be a copy"
    tracker.set_states(saved)
    assert torch.equal(tracker.get_states()["a"], saved["a"])
    tracker.reset()
    assert tracker.get_states() == {}
    tracker.add("a", 11)  # names and seeds are free again


class FakeMpu:
    def __init__(self, rank):
        self.rank = rank

    def get_tensor_model_parallel_rank(self):
        return self.rank

    def get_tensor_model_parallel_world_size(self):
        return 4

    def get_tensor_model_parallel_group(self):
        return None

    def get_data_parallel_rank(self):
        return 0


def test_model_parallel_seed_is_seed_plus_2718_plus_tensor_parallel_rank(monkeypatch):
    monkeypatch.setattr(cp, "mpu", FakeMpu(rank=3))
    cp.model_parallel_cuda_manual_seed(100)
    default_state = rng.get_device_rng_state()
    tracked = rng.get_cuda_rng_tracker().get_states()[cp._MODEL_PARALLEL_RNG_TRACKER_NAME]
    rng.device_manual_seed(100)
    assert torch.equal(default_state, rng.get_device_rng_state()), "default state: the plain seed"
    rng.device_manual_seed(100 + 2718 + 3)
    assert torch.equal(tracked, rng.get_device_rng_state())
    # Called again (a new run), it starts over instead of refusing the name.
    cp.model_parallel_cuda_manual_seed(100)
    rng.get_cuda_rng_tracker().reset()


def test_the_tracker_is_the_one_checkpointing_exports():
    assert cp.get_cuda_rng_tracker() is rng.get_cuda_rng_tracker() is cp._CUDA_RNG_STATE_TRACKER
    assert cp.CudaRNGStatesTracker is rng.CudaRNGStatesTracker

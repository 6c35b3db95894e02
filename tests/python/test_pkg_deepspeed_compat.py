"""What DeepSpeed's own activation-checkpointing tests expect of the module
beyond its names: keyword arguments, the tensor-parallel seed
reconfiguration, AssertionError-compatible configuration errors, timers."""

import time
import warnings

import pytest
import torch

from ckpt import checkpointing as cp
from ckpt import dsconfig
from ckpt.rng import get_cuda_rng_tracker

VARIANTS = {"reentrant": cp.checkpoint, "non_reentrant": cp.non_reentrant_checkpoint}


@pytest.fixture(autouse=True)
def fresh():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ckpt: libckpt is not loaded")
        yield
    get_cuda_rng_tracker().reset()
    cp.configure(None)
    cp.timers = None


def layer(x, w, *, bias, scale=1.0, act="relu"):
    assert isinstance(act, str) and isinstance(scale, float)
    h = torch.nn.functional.dropout(x @ w + bias, 0.2, training=True) * scale
    return torch.relu(h) if act == "relu" else torch.tanh(h)


def leaves(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 8, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    return x, w, b


@pytest.mark.parametrize("variant", VARIANTS)
def test_keyword_arguments_tensor_and_not_with_gradients_to_the_tensor_ones(variant):
    x, w, b = leaves()
    torch.manual_seed(7)
    ref = layer(x, w, bias=b, scale=0.5, act="tanh")
    ref.sum().backward()
    want = [ref.detach(), x.grad, w.grad, b.grad]

    x, w, b = leaves()
    torch.manual_seed(7)
    out = VARIANTS[variant](layer, x, w, bias=b, scale=0.5, act="tanh")
    out.sum().backward()
    got = [out.detach(), x.grad, w.grad, b.grad]
    for i, (u, v) in enumerate(zip(want, got)):
        assert v is not None, f"no gradient for input {i}"
        assert torch.equal(u, v), i


def test_keyword_only_tensor_argument_without_positional_tensors():
    x, w, b = leaves()

    def f(*, x, w):
        return x @ w

    out = cp.checkpoint(f, x=x, w=w)
    out.sum().backward()
    assert torch.allclose(x.grad, w.detach().sum(1).expand(4, 8))
    assert w.grad is not None


def test_the_region_is_named_after_the_function_not_the_keyword_wrapper(monkeypatch):
    from ckpt import recompute

    names = []
    real = recompute.forward_region

    def spy(name, active):
        names.append(name)
        return real(name, active)

    monkeypatch.setattr(recompute, "forward_region", spy)
    x, w, b = leaves()
    cp.checkpoint(layer, x, w, bias=b)
    assert names == ["checkpoint:layer"]


def test_model_parallel_reconfigure_tp_seed_reseeds_only_the_tracker_state():
    cp.model_parallel_cuda_manual_seed(1234)
    tracker = get_cuda_rng_tracker()
    default_before = torch.random.get_rng_state() if not torch.cuda.is_available() else torch.cuda.get_rng_state()
    cp.model_parallel_reconfigure_tp_seed(99)
    default_after = torch.random.get_rng_state() if not torch.cuda.is_available() else torch.cuda.get_rng_state()
    assert torch.equal(default_before, default_after)
    with tracker.fork():
        a = torch.rand(4) if not torch.cuda.is_available() else torch.rand(4, device="cuda").cpu()
    # The same as a tracker freshly seeded with 99 + 2718 (rank 0).
    tracker.reset()
    tracker.add("model-parallel-rng", 99 + 2718)
    with tracker.fork():
        b = torch.rand(4) if not torch.cuda.is_available() else torch.rand(4, device="cuda").cpu()
    assert torch.equal(a, b)


def test_model_parallel_reconfigure_tp_seed_needs_the_state():
    get_cuda_rng_tracker().reset()
    with pytest.raises(Exception, match="not added"):
        cp.model_parallel_reconfigure_tp_seed(1)


def test_configuration_errors_are_assertion_and_value_errors_with_deepspeeds_wording():
    with pytest.raises(AssertionError, match="Must specify the number of layers"):
        cp.configure(None, partition_activations=True, contiguous_checkpointing=True)
    with pytest.raises(ValueError, match="Must specify the number of layers"):
        cp.configure(None, partition_activations=True, contiguous_checkpointing=True)
    with pytest.raises(AssertionError, match="only available with partitioned activations"):
        cp.configure(None, contiguous_checkpointing=True, num_checkpoints=4)
    with pytest.raises(AssertionError, match="number_checkpoints"):
        cp.configure(None, deepspeed_config={"activation_checkpointing": {"number_checkpoints": "four"}})
    with pytest.raises(AssertionError, match="unknown key"):
        dsconfig.parse({"activation_checkpointing": {"cpu_checkpoint": True}})
    err = dsconfig.ConfigError("x")
    assert isinstance(err, ValueError) and isinstance(err, AssertionError)


def test_partition_helper_errors_are_assertion_errors_too():
    with pytest.raises(AssertionError):
        cp.gather_partitioned_activations([torch.ones(2)])


def test_timers_behave_like_deepspeeds():
    timers = cp._Timers()
    t = timers("step")
    assert timers("step") is t and timers.has_timer("step")
    t.start()
    time.sleep(0.01)
    t.stop()
    ms = t.elapsed(reset=False)
    assert 5 < ms < 1000
    assert t.elapsed() == pytest.approx(ms)  # reset=True by default
    assert t.elapsed() == 0.0
    with pytest.raises(RuntimeError):
        t.stop()
    t.start()
    with pytest.raises(RuntimeError):
        t.start()
    t.stop()
    assert t.mean() > 0
    t.reset()
    assert t.elapsed() == 0.0
    assert timers.log(["step"]).startswith("time (ms) | step: ")


@pytest.mark.parametrize("variant", VARIANTS)
def test_profile_fills_the_module_timers(variant):
    cp.configure(None, profile=True)
    x, w, b = leaves()
    out = VARIANTS[variant](layer, x, w, bias=b)
    out.sum().backward()
    assert cp.timers is not None
    assert cp.timers(cp.FORWARD_GLOBAL_TIMER).elapsed(reset=False) > 0
    assert cp.timers.calls["forward"] >= 1
    if variant == "reentrant":
        assert cp.timers("backward").elapsed(reset=False) > 0
        assert cp.timers.calls["backward"] == 1


def test_a_failing_checkpoint_leaves_no_timer_running():
    cp.configure(None, profile=True)

    def boom(x):
        raise KeyError("boom")

    x, w, b = leaves()
    with pytest.raises(KeyError):
        cp.checkpoint(boom, x)
    assert not cp.timers(cp.FORWARD_GLOBAL_TIMER).started_
    out = cp.checkpoint(layer, x, w, bias=b)
    out.sum().backward()
    assert cp.timers(cp.FORWARD_GLOBAL_TIMER).elapsed(reset=False) > 0

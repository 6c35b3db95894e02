"""ckpt.checkpointing computes exactly what the plain model computes (CPU torch)."""

import json
import textwrap
import warnings

import pytest
import torch
from torch import nn

from conftest import child_env, run_python

from ckpt import checkpointing as cp
from ckpt import library, recompute
from ckpt.rng import get_cuda_rng_tracker

VARIANTS = {"reentrant": cp.checkpoint, "non_reentrant": cp.non_reentrant_checkpoint}


@pytest.fixture(autouse=True)
def quiet_and_fresh():
    """Checkpoints warn once that libckpt is absent; the tests know."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ckpt: libckpt is not loaded")
        yield
    get_cuda_rng_tracker().reset()


class Block(nn.Module):
    def __init__(self, width=16, p=0.3):
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.drop = nn.Dropout(p)

    def forward(self, x, scale=1.0, skip=None, tag="plain"):
        assert isinstance(tag, str)
        h = self.drop(torch.relu(self.fc1(x)))
        h = self.drop(self.fc2(h)) * scale
        return h + (x if skip is None else skip)


def make_model(depth=3, seed=0):
    torch.manual_seed(seed)
    return nn.ModuleList(Block() for _ in range(depth))


def grads_of(model, x, forward, seed=123):
    """Output, input grad and parameter grads of one forward+backward."""
    for p in model.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = forward(model, x)
    out.pow(2).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in model.parameters()]


def assert_all_equal(a, b):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u is not None and v is not None, i
        assert torch.equal(u, v), f"tensor {i} differs by {(u - v).abs().max().item()}"


def plain(model, x):
    for block in model:
        x = block(x, 0.5, None, "plain")
    return x


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_equal_the_plain_model_with_dropout_and_non_tensor_args(variant):
    ckpt_fn = VARIANTS[variant]
    model = make_model()
    x = torch.randn(8, 16)

    def checkpointed(model, x):
        for block in model:
            x = ckpt_fn(block, x, 0.5, None, "plain")
        return x

    assert_all_equal(grads_of(model, x, plain), grads_of(model, x, checkpointed))
    # Different dropout masks would have shown: the seed matters.
    assert not torch.equal(grads_of(model, x, plain, seed=1)[0], grads_of(model, x, plain, seed=2)[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_integer_and_non_tensor_outputs(variant):
    ckpt_fn = VARIANTS[variant]
    model = make_model(depth=1)
    x = torch.randn(4, 16)

    def with_extras(x):
        h = model[0](x)
        return h, h.argmax(dim=1), "label", None

    def forward(model, x, fn=None):
        h, idx, label, nothing = (fn or (lambda f, *a: f(*a)))(with_extras, x)
        assert label == "label" and nothing is None
        assert idx.dtype == torch.int64 and not idx.requires_grad
        return h * (1 + idx.unsqueeze(1))

    reference = grads_of(model, x, forward)
    assert_all_equal(reference, grads_of(model, x, lambda m, x: forward(m, x, ckpt_fn)))


@pytest.mark.parametrize("outer", VARIANTS)
@pytest.mark.parametrize("inner", VARIANTS)
def test_nested_checkpoints(outer, inner):
    outer_fn, inner_fn = VARIANTS[outer], VARIANTS[inner]
    model = make_model(depth=4)
    x = torch.randn(8, 16)

    def pair(a, b, x):
        return inner_fn(b, inner_fn(a, x, 0.5, None, "plain"), 0.5, None, "plain")

    def nested(model, x):
        x = outer_fn(pair, model[0], model[1], x)
        return outer_fn(pair, model[2], model[3], x)

    assert_all_equal(grads_of(model, x, plain), grads_of(model, x, nested))


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_parallel_rng_tracker_is_replayed(variant):
    ckpt_fn = VARIANTS[variant]
    model = make_model(depth=2)
    x = torch.randn(8, 16)

    def tracked(block, x):
        with get_cuda_rng_tracker().fork():
            x = block.drop(x)  # model-parallel dropout: from the tracker's stream
        return block(x)

    def run(use_ckpt):
        def forward(model, x):
            cp.model_parallel_cuda_manual_seed(1234)
            for block in model:
                x = ckpt_fn(tracked, block, x) if use_ckpt else tracked(block, x)
            return x
        return forward

    assert_all_equal(grads_of(model, x, run(False)), grads_of(model, x, run(True)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_return_convention_matches_deepspeed(variant):
    ckpt_fn = VARIANTS[variant]
    x = torch.randn(3, requires_grad=True)
    single = ckpt_fn(lambda t: (t * 2,), x)
    assert torch.is_tensor(single)
    pair = ckpt_fn(lambda t: [t * 2, t * 3], x)
    assert isinstance(pair, tuple) and len(pair) == 2


def test_reentrant_refuses_autograd_grad_like_deepspeed():
    block = make_model(depth=1)[0]
    x = torch.randn(4, 16, requires_grad=True)
    out = cp.checkpoint(block, x)
    with pytest.raises(RuntimeError, match=r"not compatible with \.grad\(\)"):
        torch.autograd.grad(out.sum(), x)


def test_non_reentrant_allows_autograd_grad_and_inputs_without_grad():
    block = make_model(depth=1)[0]
    x = torch.randn(4, 16)  # no input requires grad: only the parameters do
    torch.manual_seed(5)
    expected = torch.autograd.grad(block(x).sum(), block.fc1.weight)[0]
    torch.manual_seed(5)
    got = torch.autograd.grad(cp.non_reentrant_checkpoint(block, x).sum(), block.fc1.weight)[0]
    assert torch.equal(expected, got)


@pytest.mark.parametrize("variant", VARIANTS)
def test_autocast_state_is_replayed(variant):
    ckpt_fn = VARIANTS[variant]
    model = make_model(depth=2)
    x = torch.randn(8, 16)

    def forward(use_ckpt):
        def run(model, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                for block in model:
                    x = ckpt_fn(block, x) if use_ckpt else block(x)
            return x.float()
        return run

    assert_all_equal(grads_of(model, x, forward(False)), grads_of(model, x, forward(True)))


def test_the_outer_rng_stream_continues_as_without_checkpointing():
    model = make_model(depth=2)
    x = torch.randn(8, 16, requires_grad=True)  # reentrant: an input must require grad
    for use_ckpt in (False, True):
        torch.manual_seed(9)
        h = x
        for block in model:
            h = cp.checkpoint(block, h) if use_ckpt else block(h)
        h.sum().backward()
        after = torch.rand(4)
        if not use_ckpt:
            expected = after
    assert torch.equal(expected, after)


class Recorder:
    """Fake bound library recording the calls the checkpoints make."""

    def __init__(self):
        self.calls = []
        self.ids = 0
        self.open = []

    def ckpt_region_begin(self, name):
        self.ids += 1
        self.open.append(self.ids)
        self.calls.append(("begin", name.decode()))
        return self.ids

    def ckpt_region_end(self):
        self.calls.append(("end",))
        return self.open.pop()

    def ckpt_restore_ptr(self, ptr):
        self.calls.append(("restore_ptr", ptr))
        return -2  # CKPT_ENOENT: nothing tagged there

    def ckpt_set_stream(self, stream):
        return 0

    def ckpt_mode(self):
        return b"host"


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_runs_in_a_region_and_the_recompute_restores_its_inputs_first(variant, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(library, "_library", recorder)
    monkeypatch.setattr(recompute, "RESTORE_DEVICE_TYPES", ("cpu",))  # pretend CPU tensors are tagged
    ckpt_fn = VARIANTS[variant]
    model = make_model(depth=2)
    x = torch.randn(4, 16, requires_grad=True)

    seen_in_recompute = []

    def probe(block, h):
        if recompute.recomputing():
            seen_in_recompute.append(list(recorder.calls))
        return block(h)

    h1 = ckpt_fn(probe, model[0], x)
    h2 = ckpt_fn(probe, model[1], h1)
    assert recorder.calls == [("begin", "checkpoint:probe"), ("end",)] * 2
    recorder.calls.clear()
    h2.sum().backward()
    # Backward: checkpoint 2 first, its input (h1) restored before its recompute ran.
    assert recorder.calls[0] == ("restore_ptr", h1.data_ptr())
    assert seen_in_recompute[0] == [("restore_ptr", h1.data_ptr())]
    assert ("restore_ptr", x.data_ptr()) in recorder.calls
    assert not any(c[0] == "begin" for c in recorder.calls), "a recompute opened a region"


def test_no_region_without_autograd(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(library, "_library", recorder)
    block = make_model(depth=1)[0]
    with torch.no_grad():
        cp.checkpoint(block, torch.randn(2, 16))
        cp.non_reentrant_checkpoint(block, torch.randn(2, 16))
    assert recorder.calls == []


UNDER_PRELOAD = textwrap.dedent("""
    import json, torch, ckpt
    from torch import nn
    from ckpt import checkpointing as cp
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2)) for _ in range(4)]
    x = torch.randn(2, 8, requires_grad=True)
    before = ckpt.stats()["regions_opened"]
    h = x
    for i, b in enumerate(blocks):
        h = (cp.checkpoint if i % 2 else cp.non_reentrant_checkpoint)(b, h)
    forward = ckpt.stats()["regions_opened"] - before
    h.sum().backward()
    after = ckpt.stats()
    print(json.dumps({"forward": forward, "total": after["regions_opened"] - before,
                      "open": after["regions_opened"] - after["regions_closed"]}))
""")


def test_each_checkpoint_forward_is_one_region_of_the_real_library(libckpt):
    result = run_python(["-c", UNDER_PRELOAD], child_env(preload=libckpt))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"forward": 4, "total": 4, "open": 0}


def test_argument_helpers_round_trip():
    t = torch.randn(2, requires_grad=True)
    args = (1, t, "s", None, t * 2)
    tensors, others, flags = cp.extract_tensors(args)
    assert isinstance(tensors, tuple) and len(tensors) == 2 and others == (1, "s", None)
    assert cp.merge_tensors(tensors, others, flags)[1] is t
    detached = cp.detach_variable(tensors)
    assert detached[0].requires_grad and detached[0].grad_fn is None
    assert detached[0].data_ptr() == t.data_ptr(), "detached, not copied"
    with pytest.raises(RuntimeError, match="tuple"):
        cp.detach_variable([t])


def test_partition_helpers_work_on_one_rank(monkeypatch):
    monkeypatch.setattr(cp, "mpu", None)
    monkeypatch.setattr(cp, "mp_rank", None)
    x = torch.randn(3, 4)
    args = [x, 7, torch.arange(3)]
    parts = cp.partition_activations(args, cpu_checkpoint=True, contiguous_checkpoint=False)
    assert parts[0].shape == (12,) and parts[1] == 7 and parts[2] is args[2]
    assert (cp.get_partition_start(x), cp.get_partition_size(x)) == (0, 12)
    saved = cp.get_partitioned_activations_for_backward(args, parts, contiguous_checkpoint=False)
    assert len(saved) == 6
    restored = cp.gather_partitioned_activations(saved)
    assert torch.equal(restored[0], x) and restored[1] == 7 and restored[2] is args[2]
    assert cp.get_cpu_activations_for_backward(args, parts)[0] is parts[0]
    assert cp.is_activation_to_checkpoint(x) and not cp.is_activation_to_checkpoint(args[2])

"""CKPT_REGIONS=<class names>: modules of those classes run as regions, without recompute.

Offload-only: a listed module's forward runs in a region of its own, so what
it saves for backward is tagged and offloaded once the next region has closed.
When backward reaches the module (a pre-hook on the grad_fn of each of its
outputs, which run before any of its backward nodes), ckpt_restore brings the
region back, and libckpt prefetches the region before.

Hooks are attached per instance, from nn.Module.__init__, so modules of other
classes keep torch's fast path without hooks. A class matches by its name
(`TransformerEncoderLayer`) or its qualified name (`torch.nn.modules.transformer.TransformerEncoderLayer`).
Modules built before install() get hooks through attach_all(model).
"""

from __future__ import annotations

import functools
import threading
from typing import Any, FrozenSet, Iterable, Iterator

import torch

from . import recompute

ORIGINAL = "__ckpt_original__"

_names: FrozenSet[str] = frozenset()
_local = threading.local()


def matches(module: Any) -> bool:
    cls = type(module)
    return cls.__name__ in _names or f"{cls.__module__}.{cls.__qualname__}" in _names


def _stack() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _pre_hook(module, args) -> None:
    stack = _stack()
    nested_in_itself = any(entry[0] is module for entry in stack)
    region_id = None
    if not nested_in_itself and recompute.regions_wanted():
        region_id = recompute.begin_region("module:" + type(module).__name__)
    stack.append((module, region_id))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _restore_before_backward(output: Any, region_id: int) -> None:
    nodes = {}
    for tensor in _tensors(output):
        node = tensor.grad_fn
        if node is not None:
            nodes[id(node)] = node
    if not nodes:
        return
    pending = [True]

    def restore(grad_outputs):
        if pending[0]:
            pending[0] = False
            recompute.restore_region(region_id)
        return None

    for node in nodes.values():
        node.register_prehook(restore)


def _post_hook(module, args, output) -> None:
    stack = _stack()
    # Paired with _pre_hook, unless a pre-hook before ours raised: then ours never ran.
    if not stack or stack[-1][0] is not module:
        return None
    _, region_id = stack.pop()
    if region_id is None:
        return None
    recompute.end_region(region_id)
    if output is not None:
        _restore_before_backward(output, region_id)
    return None


def attach(module: torch.nn.Module) -> bool:
    """Gives one module the region hooks (once)."""
    if any(hook is _pre_hook for hook in module._forward_pre_hooks.values()):
        return False
    module.register_forward_pre_hook(_pre_hook)
    module.register_forward_hook(_post_hook, always_call=True)
    return True


def attach_all(root: torch.nn.Module) -> int:
    """Hooks every matching module under root (for modules built before install())."""
    return sum(attach(m) for m in root.modules() if matches(m))


def install(module_module: Any = None, names: Iterable[str] = ()) -> bool:
    """Sets the class names and makes nn.Module.__init__ hook matching instances.

    module_module: torch.nn.modules.module (given by the post-import hook).
    """
    global _names
    _names = frozenset(names)
    if module_module is None:
        import torch.nn.modules.module as module_module
    Module = module_module.Module
    if getattr(Module.__init__, ORIGINAL, None) is not None:
        return False
    original = Module.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if _names and matches(self):
            attach(self)

    setattr(__init__, ORIGINAL, original)
    Module.__init__ = __init__
    return True


def uninstall() -> bool:
    Module = torch.nn.Module
    original = getattr(Module.__init__, ORIGINAL, None)
    if original is None:
        return False
    Module.__init__ = original
    return True

"""Splitting a checkpoint's arguments into tensors and the rest, and back.

Only tensors can be saved for backward and detached for the recompute; the
other arguments (ints, None, strings, modules...) are kept aside with a flag
list that says where each kind goes.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import torch


def detach_variable(inputs: Tuple[Any, ...], device=None) -> Tuple[Any, ...]:
    """Detached copies (sharing storage) of the tensors of a tuple, each keeping its
    requires_grad, optionally moved to `device`; other items pass through."""
    if not isinstance(inputs, tuple):
        raise RuntimeError(f"detach_variable takes a tuple, got {type(inputs).__name__}")
    out = []
    for item in inputs:
        if not isinstance(item, torch.Tensor):
            out.append(item)
            continue
        moved = item.to(device=device) if device is not None else item
        detached = moved.detach()
        detached.requires_grad = item.requires_grad
        out.append(detached)
    return tuple(out)


def extract_tensors(all_objects: Union[list, tuple]):
    """(tensors, non-tensors, is-tensor flags), each in the original order; tuples
    when given a tuple, lists otherwise."""
    tensors = [v for v in all_objects if torch.is_tensor(v)]
    others = [v for v in all_objects if not torch.is_tensor(v)]
    flags = [torch.is_tensor(v) for v in all_objects]
    if type(all_objects) is tuple:
        return tuple(tensors), tuple(others), tuple(flags)
    return tensors, others, flags


def merge_tensors(tensor_objects: Sequence[Any], non_tensor_objects: Sequence[Any], tensor_flags: Sequence[bool]):
    """Inverse of extract_tensors: one tuple in the original order.

    (DeepSpeed's version also skips interleaved partition-size flags when
    activations are partitioned; ckpt never interleaves them.)
    """
    tensors = iter(tensor_objects)
    others = iter(non_tensor_objects)
    return tuple(next(tensors) if is_tensor else next(others) for is_tensor in tensor_flags)

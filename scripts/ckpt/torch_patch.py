"""CKPT_PATCH=torch: every torch.utils.checkpoint.checkpoint call becomes a region.

The patch wraps the checkpointed function, not torch's algorithm: both
use_reentrant values, context_fn, determinism checks and RNG handling stay
torch's own. The wrapper's first call (the forward) runs in a libckpt region;
its later calls (the recomputes) restore the tensor arguments first
(ckpt_restore_ptr), which also prefetches the region before. checkpoint_sequential
goes through the same function. Under torch.compile the original runs untouched.
"""

from __future__ import annotations

import functools

import torch

from . import recompute

ORIGINAL = "__ckpt_original__"


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def wrap(original):
    """The patched checkpoint(), calling `original` with a region-aware function."""

    @functools.wraps(original)
    def checkpoint(function, *args, **kwargs):
        if _is_compiling():
            return original(function, *args, **kwargs)
        wrapped = recompute.RegionFunction(
            function, "torch.checkpoint:" + recompute.name_of(function), recompute.regions_wanted()
        )
        return original(wrapped, *args, **kwargs)

    setattr(checkpoint, ORIGINAL, original)
    return checkpoint


def install(module=None) -> bool:
    """Patches torch.utils.checkpoint.checkpoint (given the module, or importing it)."""
    if module is None:
        import torch.utils.checkpoint as module
    current = module.checkpoint
    if getattr(current, ORIGINAL, None) is not None:
        return False
    module.checkpoint = wrap(current)
    return True


def uninstall(module=None) -> bool:
    if module is None:
        import torch.utils.checkpoint as module
    original = getattr(module.checkpoint, ORIGINAL, None)
    if original is None:
        return False
    module.checkpoint = original
    return True

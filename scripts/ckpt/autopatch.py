"""Zero code change: installs what CKPT_PATCH / CKPT_REGIONS ask for, lazily.

Imported at interpreter start by _boot/sitecustomize.py (see ckpt.launch for
how the launcher arranges that); importing it runs install(). Nothing here
imports torch: the patches are applied by post-import hooks as soon as
torch.utils.checkpoint (CKPT_PATCH=torch) or torch.nn.modules.module
(CKPT_REGIONS) has been imported, before the script can use them.

  CKPT_PATCH=torch             torch.utils.checkpoint.checkpoint -> regions (ckpt.torch_patch)
  CKPT_REGIONS=Cls1,Cls2       modules of those classes -> regions (ckpt.module_regions)

Without libckpt in the process nothing is patched, and a warning says why.
"""

from __future__ import annotations

import os
import warnings
from typing import FrozenSet, List, Mapping, Optional

from . import library, postimport

PATCH_VALUES = ("torch",)
_PATCH_OFF = ("", "0", "none", "off", "no", "false")

installed: List[str] = []


def _warn(message: str) -> None:
    warnings.warn("ckpt: " + message, RuntimeWarning, stacklevel=3)


def _patch_torch_checkpoint(module) -> None:
    from . import torch_patch

    torch_patch.install(module)


def parse_names(value: str) -> FrozenSet[str]:
    """Class names from a comma-separated CKPT_REGIONS value."""
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _hook_modules(module, names) -> None:
    from . import module_regions

    module_regions.install(module, names)


def install(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Registers the integrations environ asks for; returns their names."""
    env = os.environ if environ is None else environ
    patch = env.get("CKPT_PATCH", "").strip().lower()
    regions_value = env.get("CKPT_REGIONS", "").strip()
    wanted: List[str] = []
    if patch not in _PATCH_OFF:
        if patch in PATCH_VALUES:
            wanted.append("patch:" + patch)
        else:
            _warn(f"CKPT_PATCH={env.get('CKPT_PATCH')!r} is not understood (accepted: torch, none); ignored")
    if regions_value:
        wanted.append("regions")
    if not wanted:
        return []
    if not library.available():
        _warn("CKPT_PATCH/CKPT_REGIONS are set but libckpt is not loaded "
              "(run under LD_PRELOAD=/path/to/libckpt.so or scripts/ckpt-run): nothing is patched")
        return []
    done = []
    if "patch:torch" in wanted and "patch:torch" not in installed:
        postimport.when_imported("torch.utils.checkpoint", _patch_torch_checkpoint)
        done.append("patch:torch")
    if "regions" in wanted:
        if "regions" not in installed:
            names = parse_names(regions_value)
            postimport.when_imported("torch.nn.modules.module", lambda module: _hook_modules(module, names))
        done.append("regions")
    installed.extend(name for name in done if name not in installed)
    _tell_libckpt()
    return done


def _tell_libckpt() -> None:
    """Tells the C side that the package ran here: otherwise libckpt warns at
    exit that CKPT_PATCH / CKPT_REGIONS did nothing (LD_PRELOAD without ckpt-run).
    ckpt_python_loaded only sets a flag; an older libckpt lacks it."""
    import ctypes

    try:
        fn = getattr(ctypes.CDLL(None), "ckpt_python_loaded", None)
    except OSError:
        return
    if fn is not None:
        fn.restype = ctypes.c_int
        fn()


install()

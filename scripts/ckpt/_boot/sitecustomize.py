"""Loads ckpt.autopatch at interpreter start, then the sitecustomize this one hides.

The launcher (scripts/ckpt-run, or anything using ckpt.launch_env) puts this
folder first on PYTHONPATH when CKPT_PATCH or CKPT_REGIONS is set, so Python
imports this file as `sitecustomize`. The ckpt used is the copy this file
belongs to, whatever else is on sys.path. A failure is reported on stderr and
never stops the program.
"""

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(_HERE))


def _load_ckpt():
    sys.path.insert(0, _PACKAGE_PARENT)
    try:
        import ckpt.autopatch  # noqa: F401
    except Exception as exc:
        sys.stderr.write(f"ckpt: sitecustomize could not load ckpt.autopatch: {exc!r}\n")
    finally:
        try:
            sys.path.remove(_PACKAGE_PARENT)
        except ValueError:
            pass


def _same(a, b):
    try:
        return os.path.samefile(a or ".", b)
    except OSError:
        return False


def _chain():
    """Runs the next sitecustomize on sys.path, the one Python would have run."""
    later = []
    seen_self = False
    for entry in sys.path:
        if not seen_self:
            seen_self = _same(entry, _HERE)
            continue
        later.append(entry)
    if not seen_self:
        later = [e for e in sys.path if not _same(e, _HERE)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", later)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.stderr.write(f"ckpt: the chained sitecustomize {spec.origin} failed: {exc!r}\n")
    return module


_load_ckpt()
chained = _chain()

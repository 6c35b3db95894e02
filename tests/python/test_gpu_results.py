"""tests/gpu/results.py reads libckpt's exit summary line: every form it
prints must give its numbers (a misread count failed gpu-check's CPU dry run:
"regions were opened: regions=0" for a line saying regions=10)."""

import importlib.util

from conftest import REPO


def _results():
    spec = importlib.util.spec_from_file_location("gpu_results", REPO / "tests" / "gpu" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_without_a_device_counts_regions():
    s = _results().parse_summary("libckpt[6140] summary: no CUDA device was used (regions=10): nothing to offload")
    assert s["regions"] == 10


def test_summary_fields_and_units():
    s = _results().parse_summary(
        "x\nlibckpt[1] summary: mode=host regions=12 tagged=3 offloaded=1.0 MiB restored=2.5 GiB "
        "device released peak=2.0 MiB copy=0.1 s pool-full=0 restore-oom=1, driver-errors=2")
    assert s["mode"] == "host"
    assert (s["regions"], s["tagged"], s["restore_oom"], s["driver_errors"]) == (12, 3, 1, 2)
    assert s["offloaded_mib"] == 1.0 and s["restored_mib"] == 2560.0 and s["released_peak_mib"] == 2.0
    assert s["copy_s"] == 0.1


def test_no_summary_line():
    assert _results().parse_summary("nothing here") is None

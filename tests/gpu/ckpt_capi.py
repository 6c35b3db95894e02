"""include/ckpt.h through ctypes, straight from the process's global namespace.

The GPU checks call the C API directly (not the scripts/ckpt package) so that
a check of the library does not depend on the package. load() returns None
when libckpt is not preloaded in this process.
"""

import ctypes

UNTAGGED, DEVICE, OFFLOADING, HOST, RESTORING, PEER = range(6)
RESIDENCY = {0: "untagged", 1: "device", 2: "offloading", 3: "host", 4: "restoring", 5: "peer"}
ENOENT = -2


class Stats(ctypes.Structure):
    """struct ckpt_stats, field by field, in the header's order."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "hooked_calls", "regions_opened", "regions_closed", "tagged_allocs",
        "tagged_allocs_live", "tagged_bytes_live", "untagged_allocs", "mapping_cache_hits",
        "mapping_cache_bytes", "offloads", "offloaded_bytes_total", "restores",
        "restored_bytes_total", "host_bytes_in_use", "host_pool_bytes", "device_bytes_released",
        "device_bytes_released_peak")] + [
        ("copy_seconds_total", ctypes.c_double),
        ("stall_seconds_total", ctypes.c_double)] + [(name, ctypes.c_uint64) for name in (
            "host_pool_exhausted", "restore_oom", "driver_errors", "device_used_now", "device_used_peak")]


_SIGNATURES = {
    "ckpt_region_begin": (ctypes.c_int, [ctypes.c_char_p]),
    "ckpt_region_end": (ctypes.c_int, []),
    "ckpt_query": (ctypes.c_int, [ctypes.c_uint64, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]),
    "ckpt_restore": (ctypes.c_int, [ctypes.c_int]),
    "ckpt_restore_ptr": (ctypes.c_int, [ctypes.c_uint64]),
    "ckpt_step": (ctypes.c_int, []),
    "ckpt_set_stream": (ctypes.c_int, [ctypes.c_uint64]),
    "ckpt_release_cached": (ctypes.c_int, []),
    "ckpt_stats_get": (ctypes.c_int, [ctypes.POINTER(Stats), ctypes.c_size_t]),
    "ckpt_mode": (ctypes.c_char_p, []),
}


class Lib:
    def __init__(self, cdll):
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(cdll, name)
            fn.restype, fn.argtypes = restype, argtypes
            # ckpt_region_begin -> .region_begin; query and mode get Python wrappers below.
            short = name[5:]
            setattr(self, "_" + short if short in ("query", "mode") else short, fn)

    def query(self, ptr):
        """(rc, region id, residency name) of device address ptr."""
        region, residency = ctypes.c_int(0), ctypes.c_int(0)
        rc = self._query(ptr, region, residency)
        return rc, region.value, RESIDENCY.get(residency.value, str(residency.value))

    def stats(self):
        out = Stats()
        rc = self.stats_get(ctypes.byref(out), ctypes.sizeof(out))
        if rc < 0:
            raise RuntimeError(f"ckpt_stats_get returned {rc}")
        return {name: getattr(out, name) for name, _ in Stats._fields_}

    def mode_name(self):
        raw = self._mode()
        return raw.decode() if raw else "?"


def load():
    """The preloaded libckpt, or None."""
    process = ctypes.CDLL(None)
    if not hasattr(process, "ckpt_region_begin"):
        return None
    return Lib(process)


def preloaded_path():
    """Path of the libckpt mapped into this process, or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(None, 5)[-1].strip()
                if "/libckpt" in path:
                    return path
    except OSError:
        pass
    return None

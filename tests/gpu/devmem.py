"""Peak device memory as the driver sees it: cuMemGetInfo (total - free).

Not torch's pool counters: libckpt's tagged memory lives outside torch's pool
(its own VMM mappings), and offloading releases device memory the pool never
knew about. A background thread samples torch.cuda.mem_get_info (which is
cudaMemGetInfo -> cuMemGetInfo) about every millisecond; callers add samples
at the points they know matter (end of forward) with mark(), since a Python
thread only runs when the training thread lets go of the GIL.

Both torch's stream-ordered pool and libckpt's mapping cache keep freed
memory, so "in use" here includes cached memory: every mode is measured the
same way, from a baseline taken after emptying both caches (empty_caches()).
"""

import ctypes
import sys
import threading
import time

GiB = float(1 << 30)


def used_bytes(device=0):
    import torch

    if not torch.cuda.is_available():
        return 0  # CPU dry run
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def empty_caches():
    """Returns cached device memory to the driver: torch's pool, then libckpt's
    mapping cache when libckpt is in the process (found by symbol, no import)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    process = ctypes.CDLL(None)
    if hasattr(process, "ckpt_release_cached"):
        process.ckpt_release_cached()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PeakSampler:
    """with PeakSampler() as s: ...; s.peak - s.baseline = extra bytes at the peak."""

    def __init__(self, device=0, period_s=0.001):
        self.device = device
        self.period_s = period_s
        self.baseline = self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = None
        self._switch = None

    def _sample(self):
        used = used_bytes(self.device)
        self.samples += 1
        if used > self.peak:
            self.peak = used

    def mark(self):
        """A sample now, from the calling thread."""
        self._sample()

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period_s)

    def start(self):
        self.baseline = used_bytes(self.device)
        self.peak = self.baseline
        # A shorter GIL switch interval lets the sampler in about every period.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(self.period_s / 2)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="devmem-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._switch is not None:
            sys.setswitchinterval(self._switch)
        self._sample()
        return self

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()

    @property
    def extra(self):
        """Bytes in use at the peak beyond the baseline."""
        return self.peak - self.baseline

    def as_dict(self):
        return {"baseline_bytes": self.baseline, "peak_bytes": self.peak, "extra_bytes": self.extra,
                "samples": self.samples, "method": "cuMemGetInfo (total-free) every ~%g ms + marks"
                % (self.period_s * 1000)}

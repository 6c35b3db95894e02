"""Exceptions and the names of libckpt's return codes (enum ckpt_error in ckpt.h)."""

from __future__ import annotations

OK = 0
EINVAL = -1
ENOENT = -2
ESTATE = -3
ENOMEM = -4
EDRIVER = -5
EDISABLED = -6
ETIMEDOUT = -7

ERROR_NAMES = {
    OK: "CKPT_OK",
    EINVAL: "CKPT_EINVAL",
    ENOENT: "CKPT_ENOENT",
    ESTATE: "CKPT_ESTATE",
    ENOMEM: "CKPT_ENOMEM",
    EDRIVER: "CKPT_EDRIVER",
    EDISABLED: "CKPT_EDISABLED",
    ETIMEDOUT: "CKPT_ETIMEDOUT",
}

_ERROR_MEANINGS = {
    EINVAL: "bad argument",
    ENOENT: "no such region, or pointer not tagged",
    ESTATE: "wrong state (no open region, region still open, ...)",
    ENOMEM: "host or device memory exhausted",
    EDRIVER: "the CUDA driver returned an error (see the CKPT_DEBUG log)",
    EDISABLED: "libckpt is disabled (pass-through) in this process",
    ETIMEDOUT: "the region's copies did not finish within CKPT_WAIT_TIMEOUT (see the log; they go on)",
}

PRELOAD_HINT = (
    "libckpt is not loaded in this process: run it under "
    "LD_PRELOAD=/path/to/libckpt.so (or through ckpt-run, or scripts/ckpt-run in a source tree), "
    "or set CKPT_LIBRARY=/path/to/libckpt.so"
)


class LibraryNotLoaded(RuntimeError):
    """libckpt.so is not in this process, so its C API cannot be called."""

    def __init__(self, detail: str = ""):
        self.detail = detail
        super().__init__(PRELOAD_HINT + (f" ({detail})" if detail else ""))


class CkptError(RuntimeError):
    """A libckpt call returned a negative error code (CKPT_EINVAL, CKPT_ENOENT, ...)."""

    def __init__(self, call: str, code: int):
        self.call = call
        self.code = code
        self.name = ERROR_NAMES.get(code, f"unknown error {code}")
        meaning = _ERROR_MEANINGS.get(code, "")
        super().__init__(f"{call} failed: {self.name}" + (f" ({meaning})" if meaning else ""))


class PeerError(RuntimeError):
    """A peer group (CKPT_MODE=peer / peer+host) could not be set up: the message says why."""

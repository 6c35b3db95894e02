"""Names for call-site frames that libckpt could not name.

libckpt names a frame with dladdr, which only sees exported (dynamic)
symbols: a static function, or any function of an executable built without
-rdynamic, comes out as `module+0xOFFSET` (OFFSET from the module's load
base). ckpt-stats finds the module file and reads its ELF symbol table
(.symtab, else .dynsym) to turn that into `module!function+0xN`, the C side's
own format. Frames it cannot resolve (no file, stripped, not ELF) are left
as they are. Only the standard library is used.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from typing import Dict, Iterable, List, Optional, Tuple

_FRAME = re.compile(r"^([^!+\s/]+)\+0x([0-9a-fA-F]{1,16})$")

SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_FUNC = 2
PT_LOAD = 1


class ElfSymbols:
    """The function symbols of one ELF64 little-endian file, by address."""

    def __init__(self, path: str):
        self.path = path
        self.functions: List[Tuple[int, int, str]] = []  # (address, size, name), sorted
        self.base = 0  # lowest PT_LOAD address, page-aligned: what dli_fbase maps to
        try:
            with open(path, "rb") as f:
                data = f.read(256 << 20)
            self._parse(data)
        except (OSError, struct.error, ValueError, IndexError, UnicodeDecodeError):
            self.functions = []
        self._starts = [a for a, _, _ in self.functions]

    def _parse(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # ELF64, little-endian
            return
        phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
        loads = []
        for i in range(phnum):
            p_type, _, _, p_vaddr = struct.unpack_from("<IIQQ", data, phoff + i * phentsize)
            if p_type == PT_LOAD:
                loads.append(p_vaddr)
        self.base = (min(loads) & ~0xFFF) if loads else 0
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        for wanted in (SHT_SYMTAB, SHT_DYNSYM):
            tables = [s for s in sections if s[1] == wanted]
            if not tables:
                continue
            for _, _, _, _, off, size, link, _, _, entsize in tables:
                strtab = sections[link]
                str_off, str_size = strtab[4], strtab[5]
                for k in range(size // (entsize or 24)):
                    st_name, st_info, _, shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, off + k * 24)
                    if st_info & 0xF != STT_FUNC or st_value == 0 or shndx == 0:
                        continue
                    start = str_off + st_name
                    end = data.index(b"\0", start, str_off + str_size)
                    self.functions.append((st_value, st_size, data[start:end].decode("utf-8", "replace")))
            if self.functions:
                break
        self.functions.sort()

    def lookup(self, address: int) -> Optional[Tuple[str, int]]:
        """(function name, offset into it) of the code at `address`, or None."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        start, size, name = self.functions[i]
        if size and address >= start + size:
            return None
        return name, address - start


class Resolver:
    """Resolves `module+0xOFF` frames, finding modules in `search` folders, the
    process's own maps (`pid`, while it runs), PATH, LD_LIBRARY_PATH and the
    usual library folders."""

    LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                "/usr/local/lib")

    def __init__(self, search: Iterable[str] = (), pid: Optional[int] = None):
        self.search = [d for d in search if d]
        self.mapped: Dict[str, str] = {}
        if pid is not None:
            try:
                with open(f"/proc/{int(pid)}/maps") as maps:
                    for line in maps:
                        parts = line.split(None, 5)
                        if len(parts) == 6 and parts[5].startswith("/"):
                            path = parts[5].strip()
                            self.mapped.setdefault(os.path.basename(path), path)
            except (OSError, ValueError):
                pass
        env_dirs = os.environ.get("PATH", "").split(os.pathsep) + os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
        self.dirs = self.search + [d for d in env_dirs if d] + list(self.LIB_DIRS)
        self._files: Dict[str, Optional[ElfSymbols]] = {}

    def _symbols(self, module: str) -> Optional[ElfSymbols]:
        if module in self._files:
            return self._files[module]
        found = None
        candidates = ([self.mapped[module]] if module in self.mapped else []) + [os.path.join(d, module) for d in self.dirs]
        for path in candidates:
            if os.path.isfile(path):
                syms = ElfSymbols(path)
                if syms.functions:
                    found = syms
                    break
        self._files[module] = found
        return found

    def frame(self, text: str) -> str:
        m = _FRAME.match(text or "")
        if not m:
            return text
        module, offset = m.group(1), int(m.group(2), 16)
        syms = self._symbols(module)
        if syms is None:
            return text
        # The frame holds a return address: the call is the byte before it.
        hit = syms.lookup(syms.base + offset - 1) if offset else None
        if hit is None:
            return text
        name, into = hit
        return f"{module}!{name}+{into + 1:#x}"

    def sites(self, sites: List[dict]) -> List[dict]:
        """Copies of call-site dicts with their frames resolved."""
        return [dict(s, frames=[self.frame(f) for f in s.get("frames", [])]) for s in sites]

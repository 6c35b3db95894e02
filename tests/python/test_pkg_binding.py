"""The ctypes binding matches include/ckpt.h, and behaves with and without libckpt."""

import ctypes
import json
import re
import textwrap

import pytest

from conftest import REPO, child_env, run_python

import ckpt
from ckpt import errors, library

HEADER = (REPO / "include" / "ckpt.h").read_text()

C_TYPES = {
    "uint64_t": ctypes.c_uint64,
    "double": ctypes.c_double,
    "int": ctypes.c_int,
    "size_t": ctypes.c_size_t,
    "uintptr_t": library.c_uintptr,
    "unsigned long long": ctypes.c_ulonglong,
}


def header_struct_fields():
    body = re.search(r"struct ckpt_stats\s*\{(.*?)\};", HEADER, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    return re.findall(r"(\w+)\s+(\w+)\s*;", body)


def header_functions():
    text = re.sub(r"/\*.*?\*/", "", HEADER, flags=re.S)
    found = {}
    for ret, name, params in re.findall(r"^\s*((?:const\s+)?\w+\s*\*?)\s*(ckpt_\w+)\s*\(([^)]*)\)\s*;", text, re.M):
        found[name] = (ret.replace(" ", ""), [p.strip() for p in params.split(",") if p.strip() not in ("", "void")])
    return found


def header_enum(name):
    body = re.search(r"enum " + name + r"\s*\{(.*?)\};", HEADER, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    return {k: int(v) for k, v in re.findall(r"(CKPT_\w+)\s*=\s*(-?\d+)", body)}


def test_stats_structure_mirrors_the_header():
    fields = header_struct_fields()
    assert len(fields) > 20
    assert [n for _, n in fields] == [n for n, _ in library.CkptStats._fields_]
    for (ctype_name, name), (_, ctype) in zip(fields, library.CkptStats._fields_):
        assert C_TYPES[ctype_name] is ctype, name


def test_every_function_of_the_header_is_bound_with_its_types():
    declared = header_functions()
    assert set(declared) == set(library.SIGNATURES)
    for name, (ret, params) in declared.items():
        restype, argtypes = library.SIGNATURES[name]
        assert len(argtypes) == len(params), name
        expected_ret = ctypes.c_char_p if ret == "constchar*" else None if ret == "void" else C_TYPES[ret]
        assert restype is expected_ret, name
        for param, argtype in zip(params, argtypes):
            assert argtype is expected_ctype(param), (name, param)


def expected_ctype(param):
    """The ctypes type a C parameter declaration binds to (opaque structs: void *)."""
    stars = param.count("*")
    words = param.replace("*", " ").replace("const", " ").split()[:-1]  # without the parameter name
    if words[0] == "struct":
        base = library.CkptStats if words[1] == "ckpt_stats" else None
        ptr = ctypes.POINTER(base) if base is not None else ctypes.c_void_p
        return ctypes.POINTER(ptr) if stars == 2 else ptr
    if words == ["char"]:
        return ctypes.POINTER(ctypes.c_char_p) if stars == 2 else ctypes.c_char_p
    base = C_TYPES[" ".join(words)]
    return ctypes.POINTER(base) if stars else base


def test_error_and_residency_names_match_the_header():
    codes = header_enum("ckpt_error")
    assert {v: k for k, v in codes.items()} == errors.ERROR_NAMES
    residency = header_enum("ckpt_residency")
    assert {v: k.replace("CKPT_", "").lower() for k, v in residency.items()} == ckpt.RESIDENCY_NAMES


def test_errors_are_runtime_errors_that_explain():
    err = errors.CkptError("ckpt_restore", errors.ENOMEM)
    assert isinstance(err, RuntimeError) and err.code == errors.ENOMEM
    assert "CKPT_ENOMEM" in str(err) and "memory" in str(err)
    assert "LD_PRELOAD" in str(errors.LibraryNotLoaded())


IMPORT_WITHOUT_LIBRARY = textwrap.dedent("""
    import sys, warnings
    import ckpt
    assert "torch" not in sys.modules, "import ckpt imported torch"
    assert not ckpt.available()
    calls = [ckpt.step, ckpt.mode, lambda: ckpt.restore(1), lambda: ckpt.restore_ptr(4096),
             lambda: ckpt.query(4096)]
    for call in calls:
        try:
            call()
        except RuntimeError as exc:
            assert "LD_PRELOAD=" in str(exc) and "ckpt-run" in str(exc), str(exc)
        else:
            raise AssertionError("no RuntimeError")
    # region() and stats() warn once and do nothing.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ckpt.region("r") as r:
            inside = 1
        assert r.id is None and inside == 1
        @ckpt.region("d")
        def f(x):
            return x + 1
        assert f(1) == 2
        assert ckpt.stats() == {}
        with ckpt.region("again"):
            pass
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert issubclass(caught[0].category, RuntimeWarning)
    assert "does nothing" in messages[0] and "LD_PRELOAD=" in messages[0] and "ckpt-run" in messages[0]
    print("OK")
""")


def test_import_without_the_library_works_and_calls_say_to_preload():
    result = run_python(["-c", IMPORT_WITHOUT_LIBRARY], child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_stats_without_the_library_warns_once_and_returns_nothing():
    code = "import ckpt\nprint(ckpt.stats(), ckpt.stats())"
    result = run_python(["-c", code], child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{} {}"
    assert result.stderr.count("does nothing") == 1, result.stderr


USE_THE_LIBRARY = textwrap.dedent("""
    import json, warnings
    import ckpt
    assert ckpt.available()
    before = ckpt.stats()
    with ckpt.region("outer") as outer:
        with ckpt.region("inner") as inner:
            pass
    @ckpt.region("decorated")
    def f(x):
        return x + 1
    assert f(1) == 2 and f(2) == 3
    after = ckpt.stats()
    print(json.dumps({
        "opened": after["regions_opened"] - before["regions_opened"],
        "closed": after["regions_closed"] - before["regions_closed"],
        "ids": [outer.id, inner.id],
        "mode": ckpt.mode(),
        "query": ckpt.query(4096),
        "restore_unknown": ckpt.restore(10**6),
        "restore_ptr_untagged": ckpt.restore_ptr(4096),
        "path": ckpt.library_path(),
        "size": after["size"],
    }))
""")


def test_the_preloaded_library_is_found_and_bound(libckpt):
    result = run_python(["-c", USE_THE_LIBRARY], child_env(preload=libckpt))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["opened"] == 4 and out["closed"] == 4
    assert out["ids"][0] > 0 and out["ids"][1] > 0 and out["ids"][0] != out["ids"][1]
    assert out["mode"] in ("none", "host", "peer", "peer+host")
    assert out["query"] is None
    assert out["restore_unknown"] is False and out["restore_ptr_untagged"] is False
    assert out["size"] == ctypes.sizeof(library.CkptStats)
    assert out["path"] and out["path"].endswith(".so")


def test_ckpt_library_loads_by_path_and_warns_that_nothing_is_intercepted(libckpt):
    code = "import ckpt\nwith ckpt.region('r'): pass\nprint(ckpt.stats()['regions_opened'])"
    result = run_python(["-c", code], child_env(CKPT_LIBRARY=libckpt))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1"
    assert "without LD_PRELOAD" in result.stderr


def test_a_missing_library_path_still_gives_the_hint(tmp_path):
    code = "import ckpt\nckpt.stats()\ntry:\n    ckpt.step()\nexcept RuntimeError as e:\n    print(e)"
    result = run_python(["-c", code], child_env(CKPT_LIBRARY=tmp_path / "nope.so"))
    assert result.returncode == 0, result.stderr
    assert "LD_PRELOAD=" in result.stdout and "nope.so" in result.stdout
    assert "does nothing" in result.stderr and "nope.so" in result.stderr


class FakeLib:
    """Stands in for the bound library: records calls, returns chosen codes."""

    def __init__(self, **codes):
        self.calls = []
        self.codes = codes
        self.next_id = 0

    def _ret(self, name, default):
        return self.codes.get(name, default)

    def ckpt_region_begin(self, name):
        self.calls.append(("begin", name))
        self.next_id += 1
        return self._ret("begin", self.next_id)

    def ckpt_region_end(self):
        self.calls.append(("end",))
        return self._ret("end", self.next_id)

    def ckpt_restore(self, region):
        self.calls.append(("restore", region))
        return self._ret("restore", 0)

    def ckpt_restore_ptr(self, ptr):
        self.calls.append(("restore_ptr", ptr))
        return self._ret("restore_ptr", 0)

    def ckpt_set_stream(self, stream):
        self.calls.append(("set_stream", stream))
        return 0

    def ckpt_mode(self):
        return b"host"


@pytest.fixture
def fake_lib(monkeypatch):
    fake = FakeLib()
    monkeypatch.setattr(library, "_library", fake)
    return fake


def test_nothing_to_restore_is_an_answer_and_other_codes_raise(fake_lib):
    fake_lib.codes["restore"] = errors.ENOENT
    assert ckpt.restore(3) is False
    fake_lib.codes["restore"] = errors.EDISABLED
    assert ckpt.restore(3) is False
    fake_lib.codes["restore"] = 0
    assert ckpt.restore(3) is True
    fake_lib.codes["restore"] = errors.EDRIVER
    with pytest.raises(errors.CkptError, match="CKPT_EDRIVER"):
        ckpt.restore(3)


def test_a_disabled_library_makes_regions_no_ops(fake_lib):
    fake_lib.codes["begin"] = errors.EDISABLED
    with ckpt.region("r") as r:
        assert r.id is None
    assert ("end",) not in fake_lib.calls


def test_a_library_lacking_a_function_fails_only_when_it_is_called():
    libc = ctypes.CDLL(None)  # the process: no ckpt_* symbols in this test run
    if hasattr(libc, "ckpt_region_begin"):
        pytest.skip("libckpt is preloaded into the test process")
    bound = library.Library(libc, "/fake/libckpt.so", preloaded=False)
    assert set(bound.missing) == set(library.SIGNATURES)
    with pytest.raises(RuntimeError, match="/fake/libckpt.so has no ckpt_step"):
        bound.ckpt_step()

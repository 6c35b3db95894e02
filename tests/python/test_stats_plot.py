"""ckpt-stats --plot on a synthetic trace: the lanes, the step markers, the
peak note, the format by extension; call sites resolved to function names."""

import os
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import BUILD_DIR, SCRIPTS

from ckpt import stats_trace as st
from ckpt import symbols

MiB = 1 << 20


def write_trace(path, records, names=None):
    """records: (t_seconds, kind, region, bytes, value); names: {name id: text}."""
    out = [st.HEADER.pack(st.MAGIC, st.VERSION, st.HEADER.size, st.RECORD.size, 4242, 0, 0)]
    for nid, text in (names or {}).items():
        raw = text.encode() + b"\0"
        n = -(-len(raw) // st.RECORD.size)
        out.append(st.RECORD.pack(0, st.NAME, n, nid, 0, 0, 0))
        out.append(raw.ljust(n * st.RECORD.size, b"\0"))
    for t, kind, region, nbytes, value in records:
        out.append(st.RECORD.pack(int(t * 1e9), kind, 0, region, nbytes, 0, value))
    path.write_bytes(b"".join(out))
    return path


def two_layer_step(t0, base=256 * MiB, act=256 * MiB):
    """Forward of two regions, the first offloaded (256 MiB), then restored."""
    return [
        (t0 + 0.00, st.REGION_OPEN, 1, 0, 1), (t0 + 0.10, st.REGION_CLOSE, 1, 0, 0),
        (t0 + 0.10, st.MEM, 0, 0, base + act),
        (t0 + 0.11, st.REGION_OPEN, 2, 0, 1), (t0 + 0.20, st.REGION_CLOSE, 2, 0, 0),
        (t0 + 0.20, st.MEM, 0, 0, base + 2 * act),
        (t0 + 0.21, st.OFFLOAD_START, 1, act, 0), (t0 + 0.30, st.OFFLOAD_END, 1, act, int(0.09e9)),
        (t0 + 0.30, st.MEM, 0, 0, base + act),
        (t0 + 0.40, st.RESTORE_START, 1, act, 0), (t0 + 0.45, st.STALL, 1, 0, int(0.01e9)),
        (t0 + 0.50, st.RESTORE_END, 1, act, int(0.1e9)),
        (t0 + 0.50, st.MEM, 0, 0, base + 2 * act),
        (t0 + 0.60, st.MEM, 0, 0, base),
    ]


@pytest.fixture
def synthetic(tmp_path):
    recs = two_layer_step(0.0) + [(0.7, st.STEP, 0, 0, 0)] + two_layer_step(0.7)
    return write_trace(tmp_path / "syn.trace", recs, names={1: "layer"})


def test_peak_note_says_before_after_and_the_saving():
    peak = {"used": 256 * MiB, "without_libckpt": 512 * MiB, "saved_fraction": 0.5}
    assert st.peak_note(peak) == "peak 512 \u2192 256 MiB, \u221250%"
    peak = {"used": 20 * (1 << 30), "without_libckpt": 40 * (1 << 30), "saved_fraction": 0.5}
    assert st.peak_note(peak) == "peak 40 \u2192 20 GiB, \u221250%"
    assert st.peak_note({"used": None, "without_libckpt": None, "saved_fraction": None}) is None


def test_synthetic_trace_peak_regions_steps_and_backward(synthetic):
    tr = st.read_trace(str(synthetic))
    peak = st.peak_saving(tr)
    # At the second region's close 768 MiB are in use; after the offload 512
    # are, and the restore brings it back to 768: with libckpt, the peak is
    # where the restore lands, without it the 256 MiB offloaded stay.
    assert peak["used"] == 768 * MiB and peak["without_libckpt"] == 768 * MiB
    regions = st.region_intervals(tr)
    assert [(round(a, 2), round(b, 2), n) for a, b, n, _ in regions][:2] == [(0.0, 0.1, "layer"), (0.11, 0.2, "layer")]
    assert st.step_times(tr) == [pytest.approx(0.7)]
    spans = st.backward_spans(tr)
    assert [(round(a, 2), round(b, 2)) for a, b in spans] == [(0.4, 0.7), (1.1, 1.3)]
    assert st.summary(tr)["device_peak"]["used"] == 768 * MiB


def test_peak_saving_when_offloads_stay_out():
    recs = [(0.0, st.MEM, 0, 0, 512 * MiB), (0.1, st.OFFLOAD_END, 1, 256 * MiB, 1), (0.1, st.MEM, 0, 0, 256 * MiB),
            (0.2, st.OFFLOAD_END, 2, 256 * MiB, 1), (0.2, st.MEM, 0, 0, 256 * MiB)]
    tr = st.Trace(path="x", pid=1, start_realtime=0, events=[st.Event(t, k, r, b, 0, v) for t, k, r, b, v in recs],
                  names={}, region_names={})
    peak = st.peak_saving(tr)
    assert peak == {"used": 512 * MiB, "without_libckpt": 768 * MiB, "saved_fraction": pytest.approx(1 / 3)}
    assert st.peak_note(peak) == "peak 768 \u2192 512 MiB, \u221233%"


@pytest.mark.parametrize("ext,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_plot_format_follows_the_extension(synthetic, tmp_path, ext, magic):
    pytest.importorskip("matplotlib")
    out = tmp_path / ("plot" + ext)
    r = subprocess.run([sys.executable, str(SCRIPTS / "ckpt-stats"), "--trace", str(synthetic), "--plot", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:len(magic)] == magic
    if ext == ".svg":
        text = out.read_text()
        for words in ("peak 768", "step 1", "offload D", "restore H", "regions", "backward", "layer"):
            assert words in text, words


def test_plot_refuses_an_unknown_extension(synthetic, tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPTS / "ckpt-stats"), "--trace", str(synthetic),
                        "--plot", str(tmp_path / "plot.jpg")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().endswith("the plot format follows the extension: .png, .svg or .pdf")
    assert not (tmp_path / "plot.jpg").exists()


# ---- call sites ------------------------------------------------------------------


def test_frames_resolve_to_function_names_where_symbols_exist(tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "prog.c"
    src.write_text("static int helper(int x) { return x * 3; }\n"
                   "int (*volatile keep)(int) = helper;\n"
                   "int main(void) { return keep(1) == 3 ? 0 : 1; }\n")
    exe = tmp_path / "prog"
    subprocess.run([cc, "-O0", "-fPIE", "-pie", "-o", str(exe), str(src)], check=True)
    helper = symbols.ElfSymbols(str(exe)).functions
    addr = next(a for a, size, name in helper if name == "helper")
    resolver = symbols.Resolver(search=[str(tmp_path)])
    assert resolver.frame(f"prog+{addr + 4:#x}") == "prog!helper+0x4"
    # Already named, unknown module, raw address, stripped: left as they are.
    assert resolver.frame("prog!main+0x10") == "prog!main+0x10"
    assert resolver.frame("nosuchmodule+0x10") == "nosuchmodule+0x10"
    assert resolver.frame("0x7fff1234") == "0x7fff1234"
    stripped = tmp_path / "bin" / "prog"
    stripped.parent.mkdir()
    shutil.copy(exe, stripped)
    if shutil.which("strip"):
        subprocess.run(["strip", str(stripped)], check=True)
        assert symbols.Resolver(search=[str(stripped.parent)]).frame(f"prog+{addr + 4:#x}") == f"prog+{addr + 4:#x}"


def test_resolver_never_fails_on_garbage(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x7fELF" + os.urandom(200))
    r = symbols.Resolver(search=[str(tmp_path)])
    for frame in ("junk+0x10", "junk+zz", "+0x1", "", "a!b", "junk+0x" + "f" * 40):
        assert isinstance(r.frame(frame), str)


def test_ckpt_stats_trace_names_static_functions_of_the_program(tmp_path):
    """integ_stats's call sites include static functions that dladdr cannot
    name; ckpt-stats finds them in the program's symbol table."""
    prog = BUILD_DIR / "tests" / "integ_stats"
    lib = BUILD_DIR / "preload" / "libckpt.so"
    if not prog.is_file() or not lib.is_file():
        pytest.skip("build/ not built")
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    if "libunwind" not in ldd:
        pytest.skip("libckpt built without libunwind: no call sites")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
    env.update(LD_PRELOAD=str(lib), LD_LIBRARY_PATH=str(BUILD_DIR / "tests" / "simdev"), CKPT_MIN_BYTES="1",
               NVTX_INJECTION64_PATH="", CKPT_TRACE=str(tmp_path / "t.%p.trace"), CKPT_STACKS="1",
               CKPT_MODE="host", CKPT_DEBUG="NONE")
    subprocess.run([str(prog), "check"], env=env, capture_output=True, text=True, timeout=120)
    (trace,) = tmp_path.glob("t.*.trace")
    raw = subprocess.run([sys.executable, str(SCRIPTS / "ckpt-stats"), "--trace", str(trace), "--no-resolve"],
                         capture_output=True, text=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    r = subprocess.run([sys.executable, str(SCRIPTS / "ckpt-stats"), "--trace", str(trace),
                        "--symbols", str(prog.parent)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    unnamed = [ln.strip() for ln in raw.stdout.splitlines() if ln.strip().startswith("integ_stats+0x")]
    assert unnamed, raw.stdout  # the C side could not name them
    named = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("integ_stats!")]
    assert len(named) > len([ln for ln in raw.stdout.splitlines() if ln.strip().startswith("integ_stats!")])

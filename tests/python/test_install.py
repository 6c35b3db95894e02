"""Installing libckpt: `meson install` (library, header, pkg-config file) and the
Python package that pip builds with meson-python (sources + bundled libckpt.so)."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, SCRIPTS

PACKAGE = SCRIPTS / "ckpt"


def _meson():
    meson = shutil.which("meson")
    if meson is None:
        pytest.skip("meson is not installed")
    return meson


def _run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)


def test_meson_install_destdir_puts_library_header_and_pkgconfig(tmp_path):
    meson = _meson()
    build, dest = tmp_path / "b", tmp_path / "dest"
    r = _run([meson, "setup", build, "-Dtests=false", "--prefix=/opt/libckpt", "--libdir=lib"], cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([meson, "compile", "-C", build])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([meson, "install", "-C", build, "--destdir", dest])
    assert r.returncode == 0, r.stdout + r.stderr
    root = dest / "opt" / "libckpt"
    assert (root / "lib" / "libckpt.so").is_file()
    assert (root / "include" / "ckpt.h").read_text() == (REPO / "include" / "ckpt.h").read_text()
    pc = (root / "lib" / "pkgconfig" / "libckpt.pc").read_text()
    assert "Name: libckpt" in pc and "-lckpt" in pc and "prefix=/opt/libckpt" in pc
    assert "preload=${libdir}/libckpt.so" in pc
    # Nothing of the tests, examples or benches is installed or even built.
    installed = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert installed == ["include/ckpt.h", "lib/libckpt.so", "lib/pkgconfig/libckpt.pc"]
    assert not (build / "tests").exists()
    if shutil.which("pkg-config"):
        env = dict(os.environ, PKG_CONFIG_PATH=str(root / "lib" / "pkgconfig"),
                   PKG_CONFIG_SYSROOT_DIR=str(dest))
        r = _run(["pkg-config", "--variable=preload", "libckpt"], env=env)
        assert r.returncode == 0 and r.stdout.strip().endswith("/opt/libckpt/lib/libckpt.so"), r.stdout + r.stderr


def test_the_meson_package_list_is_every_python_file():
    """scripts/ckpt/meson.build names each source that pip install ships."""
    listed = (PACKAGE / "meson.build").read_text()
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        assert f"'{rel}'" in listed, f"{rel} is missing from scripts/ckpt/meson.build (pip install would drop it)"


def test_pyproject_declares_meson_python_and_the_console_scripts():
    try:
        import tomllib
    except ImportError:
        pytest.skip("tomllib needs Python 3.11")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert cfg["build-system"]["build-backend"] == "mesonpy"
    assert cfg["project"]["scripts"] == {"ckpt-run": "ckpt.run:main", "ckpt-stats": "ckpt.stats_cli:main"}
    assert "-Dpython_package=true" in cfg["tool"]["meson-python"]["args"]["setup"]


def test_wheel_ships_the_library_inside_the_package(tmp_path):
    """Built by pip with meson-python in an isolated build environment (what a
    user's `pip install .` does; it reaches PyPI for meson-python, meson and
    ninja, and changes nothing in this Python)."""
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path, REPO])
    assert r.returncode == 0, r.stdout + r.stderr
    wheel = next(tmp_path.glob("ckpt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ckpt/libckpt.so" in names and "ckpt/_boot/sitecustomize.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_a_package_with_a_bundled_library_finds_it(tmp_path, libckpt):
    """What an installed package looks like: ckpt/ with libckpt.so inside."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "ckpt", ignore=shutil.ignore_patterns("__pycache__", "meson.build"))
    shutil.copy(libckpt, site / "ckpt" / "libckpt.so")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_") and k not in ("LD_PRELOAD", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    code = "import ckpt; print(ckpt.bundled_library())"
    r = _run([sys.executable, "-c", code], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(site / "ckpt" / "libckpt.so")
    # ckpt-run of that package (no source tree) preloads the bundled copy.
    code = ("import sys; from ckpt.run import main; "
            "sys.exit(main(['--', sys.executable, '-c', 'import os; print(os.environ[\"LD_PRELOAD\"])']))")
    r = _run([sys.executable, "-c", code], env=dict(env, CKPT_STATS_AT_EXIT="0"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(site / "ckpt" / "libckpt.so")

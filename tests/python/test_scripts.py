"""The scripts: each answers --help without doing anything else; ckpt-run's
argument handling; `python -m ckpt`; scripts/test's environment variable."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, SCRIPTS, child_env

# Top-level scripts (scripts/bench/ has its own owner and tests).
SCRIPT_NAMES = sorted(p.name for p in SCRIPTS.iterdir() if p.is_file() and os.access(p, os.X_OK))


def run(args, env=None, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else child_env(), **kw)


def test_the_list_of_scripts_is_what_we_expect():
    assert {"ckpt-run", "ckpt-stats", "test", "setup", "demo", "gpu-check"} <= set(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_script_answers_help_and_does_nothing_else(name, tmp_path):
    # A scratch copy of the working directory: nothing may be created by --help.
    r = run([SCRIPTS / name, "--help"], timeout=30, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(r.stdout.strip().splitlines()) >= 2, r.stdout
    assert r.stderr == "", r.stderr
    assert list(tmp_path.iterdir()) == []


def test_scripts_test_help_does_not_start_the_suite():
    r = run([SCRIPTS / "test", "--help"], timeout=20)
    assert r.returncode == 0
    assert "--quick" in r.stdout and "TEST_CHECKS" in r.stdout
    assert "meson" not in r.stderr and "passed" not in r.stdout


def test_scripts_test_rejects_an_unknown_argument():
    r = run([SCRIPTS / "test", "--frobnicate"], timeout=20)
    assert r.returncode == 2 and "unknown argument --frobnicate" in r.stderr


def test_scripts_test_does_not_export_its_checks_variable():
    """libckpt warns about CKPT_* variables it does not know: scripts/test reads
    CKPT_TEST_CHECKS (the old name) and TEST_CHECKS, then unsets both."""
    text = (SCRIPTS / "test").read_text()
    assert "unset CKPT_TEST_CHECKS TEST_CHECKS" in text
    # The unset comes before anything is built or run.
    assert text.index("unset CKPT_TEST_CHECKS") < text.index("scripts/setup \"${setup_args[@]}\"")


def test_scripts_test_summary_carries_pytests_result_line():
    text = (SCRIPTS / "test").read_text()
    assert 'echo "pytest: $py_line' in text


# ---- ckpt-run -----------------------------------------------------------------


def ckpt_run(args, tmp_path=None, **extra):
    env = child_env(**extra)
    env.pop("CKPT_STATS_AT_EXIT", None)
    return run([SCRIPTS / "ckpt-run", *args], env=env)


def test_ckpt_run_help_prints_only_the_help():
    r = ckpt_run(["--help"])
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("usage: ckpt-run")
    assert "--sim" in r.stdout and "--mode" in r.stdout and "--library" in r.stdout


@pytest.mark.parametrize("flag", ["--mode", "--patch", "--regions", "--library"])
def test_ckpt_run_flag_without_its_value(flag):
    r = ckpt_run([flag])
    assert r.returncode == 2 and f"ckpt-run: {flag} needs a value" in r.stderr, r.stderr
    r = ckpt_run([flag, "--", "true"])
    assert r.returncode == 2 and f"{flag} needs a value" in r.stderr, r.stderr


def test_ckpt_run_rejects_a_bad_mode_and_an_unknown_option():
    r = ckpt_run(["--mode", "fast", "--", "true"])
    assert r.returncode == 2 and "--mode fast: not one of none, host, peer, peer+host" in r.stderr
    r = ckpt_run(["--frob", "true"])
    assert r.returncode == 2 and "unknown option --frob" in r.stderr
    r = ckpt_run([])
    assert r.returncode == 2 and "no command given" in r.stderr


def test_ckpt_run_missing_program(libckpt):
    r = ckpt_run(["--", "no-such-program-ckpt"])
    assert r.returncode == 127 and "no-such-program-ckpt: not found on PATH" in r.stderr, r.stderr
    r = ckpt_run(["--", "./no/such/file"])
    assert r.returncode == 127 and "./no/such/file: no such file" in r.stderr, r.stderr


def test_ckpt_run_not_executable(libckpt, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("x")
    r = ckpt_run(["--", f])
    assert r.returncode == 126 and "not an executable file" in r.stderr


def test_ckpt_run_missing_library_says_how_to_build(tmp_path):
    r = ckpt_run(["--", "true"], CKPT_BUILD_DIR=tmp_path)
    assert r.returncode == 2 and "libckpt.so not found" in r.stderr and "meson setup build" in r.stderr


ENV_PROBE = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
             "('LD_PRELOAD', 'LD_LIBRARY_PATH', 'CKPT_MODE', 'CKPT_PATCH', 'CKPT_REGIONS', "
             "'CKPT_STATS_AT_EXIT', 'PYTHONPATH')}))")


def probe(args, cwd=None, **extra):
    import json

    env = child_env(**extra)
    env.pop("PYTHONPATH", None)
    r = run([*args, "--", sys.executable, "-c", ENV_PROBE], env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_ckpt_run_sets_up_the_environment(libckpt):
    out = probe([SCRIPTS / "ckpt-run", "--sim", "--mode", "none", "--regions=Block", "--quiet"],
                CKPT_DEBUG="NONE")
    assert out["LD_PRELOAD"] == str(libckpt)
    assert out["LD_LIBRARY_PATH"].split(":")[0].endswith("tests/simdev")
    assert out["CKPT_MODE"] == "none" and out["CKPT_REGIONS"] == "Block" and out["CKPT_PATCH"] == "torch"
    assert out["CKPT_STATS_AT_EXIT"] == "0"
    boot, scripts = out["PYTHONPATH"].split(":")[:2]
    assert boot == str(SCRIPTS / "ckpt" / "_boot") and scripts == str(SCRIPTS)


def test_ckpt_run_works_through_a_symlink(libckpt, tmp_path):
    link = tmp_path / "bin" / "ckpt-run"
    link.parent.mkdir()
    link.symlink_to(SCRIPTS / "ckpt-run")
    out = probe([link, "--sim", "--quiet"], cwd=tmp_path, CKPT_DEBUG="NONE")
    assert out["LD_PRELOAD"] == str(libckpt)
    assert out["PYTHONPATH"].split(":")[0] == str(SCRIPTS / "ckpt" / "_boot")


def test_ckpt_run_passes_the_exit_status(libckpt):
    r = ckpt_run(["--sim", "--quiet", "--", "sh", "-c", "exit 7"], CKPT_DEBUG="NONE")
    assert r.returncode == 7, r.stderr


# ---- python -m ckpt -------------------------------------------------------------


def test_python_m_ckpt_help_is_real_help():
    r = run([sys.executable, "-m", "ckpt", "--help"])
    assert r.returncode == 0, r.stderr
    for word in ("run", "stats", "env", "library", "checkpointing"):
        assert word in r.stdout
    r = run([sys.executable, "-m", "ckpt"])
    assert r.returncode == 2 and "usage: python3 -m ckpt" in r.stdout
    r = run([sys.executable, "-m", "ckpt", "bogus"])
    assert r.returncode == 2 and "unknown command 'bogus'" in r.stderr


def test_python_m_ckpt_subcommands_reach_the_tools():
    r = run([sys.executable, "-m", "ckpt", "run", "--help"])
    assert r.returncode == 0 and r.stdout.startswith("usage: ckpt-run")
    r = run([sys.executable, "-m", "ckpt", "stats", "--help"])
    assert r.returncode == 0 and "ckpt-stats" in r.stdout
    r = run([sys.executable, "-m", "ckpt", "env"], env=child_env(CKPT_PATCH="torch"))
    assert r.returncode == 0 and r.stdout.startswith("PYTHONPATH=")
    r = run([sys.executable, "-m", "ckpt", "library"])
    assert "bundled:" in r.stdout and "loaded:" in r.stdout

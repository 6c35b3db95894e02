"""The CKPT_* table in hooks/params.def is the one list of variables: the README
documents it (scripts/gen-params-doc) and every variable the code names is in it."""
import ast
import importlib.machinery
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GEN = ROOT / "scripts" / "gen-params-doc"
NAME = re.compile(r"\bCKPT_[A-Z][A-Z0-9_]*")
# CKPT_* words that appear in strings but are not environment variables.
NOT_VARIABLES = {
    "CKPT_PARAM",  # the X-macro of params.def (the doc generator parses it)
}
# The public header's constants (error codes, residencies) are names, not variables.
NOT_VARIABLES |= set(re.findall(r"\b(CKPT_[A-Z_]+)\s*=", (ROOT / "include" / "ckpt.h").read_text()))


def _load_gen():
    loader = importlib.machinery.SourceFileLoader("gen_params_doc", str(GEN))
    spec = importlib.util.spec_from_loader("gen_params_doc", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


gen = _load_gen()


def table_names():
    return {row["name"] for row in gen.parse_def((ROOT / "hooks" / "params.def").read_text())}


def c_strings(text):
    """Contents of the string literals of C source (comments and chars skipped)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text[i] in "\"'":
            quote, j = text[i], i + 1
            while j < n and text[j] != quote and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            if quote == '"':
                out.append(text[i + 1:j])
            i = j + 1
        else:
            i += 1
    return out


def py_strings(text):
    return [node.value for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def is_python_script(path):
    if path.suffix == ".py":
        return True
    if path.suffix or not path.is_file():
        return False
    with open(path, "rb") as f:
        first = f.readline()
    return first.startswith(b"#!") and b"python" in first


def sources():
    for d in ("hooks", "preload", "include"):
        for path in sorted((ROOT / d).rglob("*")):
            if path.suffix in (".c", ".h"):
                yield path, c_strings
    for path in sorted((ROOT / "scripts").rglob("*")):
        if is_python_script(path):
            yield path, py_strings


def test_readme_matches_table():
    result = subprocess.run([sys.executable, str(GEN), "--check", str(ROOT / "README.md")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_named_variable_is_in_the_table():
    known = table_names() | NOT_VARIABLES
    missing = {}
    for path, strings in sources():
        for s in strings(path.read_text()):
            for name in NAME.findall(s):
                if name not in known:
                    missing.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert not missing, "CKPT_* names not in hooks/params.def: " + ", ".join(
        f"{name} ({', '.join(sorted(paths))})" for name, paths in sorted(missing.items()))


def test_table_shape():
    rows = gen.parse_def((ROOT / "hooks" / "params.def").read_text())
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), "duplicate names"
    for r in rows:
        assert r["name"] == "CKPT_" + r["id"], r
        assert r["type"] in {"ENUM", "SIZE", "INT", "BOOL", "STRING", "PATH"}, r
        assert r["accepted"] and r["doc"], r
        if r["type"] == "ENUM":
            assert r["default"].lower() in [w.lower() for w in r["accepted"].split("|")], r
        if r["type"] == "INT":
            lo, hi = map(int, r["accepted"].split(".."))
            assert lo <= int(r["default"]) <= hi, r


def test_check_and_write_round_trip(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{gen.BEGIN}\nstale\n{gen.END}\n\nafter\n")
    run = lambda *a: subprocess.run([sys.executable, str(GEN), *a, str(readme)],
                                    capture_output=True, text=True)
    stale = run("--check")
    assert stale.returncode == 1 and "-stale" in stale.stdout
    assert run("--write").returncode == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n") and text.endswith("\n\nafter\n")
    assert "| `CKPT_MODE` | `host` |" in text
    assert run("--check").returncode == 0
    readme.write_text("no markers\n")
    assert run("--check").returncode == 1


@pytest.mark.parametrize("bad", [
    'CKPT_PARAM(A, "CKPT_A", INT, "1", "0..2")',           # too few fields
    'CKPT_PARAM(A, "CKPT_A", INT, "1", "0..2", "doc"',      # unterminated
    '#define X 1\nCKPT_PARAM(A, "CKPT_A", INT, "1", "0..2", "doc")',
])
def test_parse_errors_are_reported(bad):
    with pytest.raises(gen.DefError):
        gen.parse_def(bad)


def test_parse_joins_adjacent_literals_and_skips_comments():
    rows = gen.parse_def('/* c */ CKPT_PARAM(A, "CKPT_A", BOOL, "0", "0|1", "one " "two") // x\n')
    assert rows == [{"id": "A", "name": "CKPT_A", "type": "BOOL", "default": "0",
                     "accepted": "0|1", "doc": "one two"}]

"""Zero code change: CKPT_PATCH=torch and CKPT_REGIONS turn an unmodified script's
checkpoints and module classes into regions, loaded through _boot/sitecustomize."""

import json
import os
import sys
import textwrap

import pytest

from conftest import SCRIPTS, child_env, run_python

import ckpt
from ckpt import launch, postimport

BOOT = SCRIPTS / "ckpt" / "_boot"

# Runs a training script untouched, then reports what libckpt and ckpt saw.
HARNESS = textwrap.dedent("""
    import json, runpy, sys
    started_with_torch = "torch" in sys.modules
    booted = "ckpt.autopatch" in sys.modules
    calls = {"restore_tensors": 0, "restore_region": []}
    if booted:
        from ckpt import recompute
        real_tensors, real_region = recompute.restore_tensors, recompute.restore_region
        def count_tensors(*values):
            calls["restore_tensors"] += 1
            return real_tensors(*values)
        def count_region(region_id):
            calls["restore_region"].append(region_id)
            return real_region(region_id)
        recompute.restore_tensors, recompute.restore_region = count_tensors, count_region
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    result = runpy.run_path(script, run_name="__main__")
    import ckpt
    stats = ckpt.stats() if ckpt.available() else {}
    print("REPORT " + json.dumps({
        "started_with_torch": started_with_torch, "booted": booted, "calls": calls,
        "regions_opened": stats.get("regions_opened"), "regions_closed": stats.get("regions_closed"),
        "digest": result.get("DIGEST")}))
""")

# Never imports ckpt. Three torch checkpoints (both use_reentrant values, one
# with kwargs) and a checkpoint_sequential of two segments (torch checkpoints
# all segments but the last): 4 checkpointed forwards.
CHECKPOINT_SCRIPT = textwrap.dedent("""
    import hashlib
    import torch
    import torch.utils.checkpoint as tuc
    from torch import nn
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    def block():
        return nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Dropout(0.2))
    a, b, c = block(), block(), block()
    seq = nn.Sequential(block(), block(), block(), block())
    def scaled(x, *, scale):
        return c(x) * scale
    x = torch.randn(4, 16, requires_grad=True)
    h = checkpoint(a, x, use_reentrant=True)
    h = tuc.checkpoint(b, h, use_reentrant=False)
    h = checkpoint(scaled, h, use_reentrant=False, scale=0.5)
    h = tuc.checkpoint_sequential(seq, 2, h, use_reentrant=False)
    h.pow(2).sum().backward()
    with torch.no_grad():
        checkpoint(a, x, use_reentrant=False)  # no autograd: no region
    grads = [x.grad] + [p.grad for m in (a, b, c, seq) for p in m.parameters()]
    DIGEST = hashlib.sha256(b"".join(g.numpy().tobytes() for g in grads)).hexdigest()
""")

# Never imports ckpt. A 3-layer encoder: 3 layer forwards with autograd, then
# one forward without (no regions).
ENCODER_SCRIPT = textwrap.dedent("""
    import hashlib
    import torch
    from torch import nn
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    x = torch.randn(2, 5, 16, requires_grad=True)
    encoder(x).pow(2).sum().backward()
    with torch.no_grad():
        encoder(x)
    grads = [x.grad] + [p.grad for p in encoder.parameters()]
    DIGEST = hashlib.sha256(b"".join(g.numpy().tobytes() for g in grads)).hexdigest()
""")


def run_script(tmp_path, script, env):
    (tmp_path / "harness.py").write_text(HARNESS)
    (tmp_path / "train.py").write_text(script)
    result = run_python([tmp_path / "harness.py", tmp_path / "train.py"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):]), result.stderr


def boot_env(libckpt, **variables):
    base = child_env(preload=libckpt, **variables)
    base.update(launch.launch_env(base))
    return base


# ---- launch_env -----------------------------------------------------------------


def test_launch_env_adds_the_boot_folder_only_when_asked():
    assert ckpt.launch_env({}) == {}
    assert ckpt.launch_env({"CKPT_PATCH": "none", "CKPT_REGIONS": " "}) == {}
    assert ckpt.launch_env({"CKPT_PATCH": "torch"}) == {"PYTHONPATH": str(BOOT)}
    added = ckpt.launch_env({"CKPT_REGIONS": "Block", "PYTHONPATH": f"/a{os.pathsep}{BOOT}{os.pathsep}/b"})
    assert added == {"PYTHONPATH": os.pathsep.join([str(BOOT), "/a", "/b"])}
    assert ckpt.launch_env({"CKPT_PATCH": "torch", "PYTHONPATH": f"{BOOT}{os.pathsep}/a"}) == {}


def test_launch_env_from_the_shell():
    env = child_env(CKPT_PATCH="torch")
    env["PYTHONPATH"] = "/x"
    for args in (["-m", "ckpt", "env", "--export"], [SCRIPTS / "ckpt" / "launch.py", "--export"]):
        result = run_python(args, {**env, "PYTHONPATH": f"/x{os.pathsep}{SCRIPTS}"}
                            if args[0] == "-m" else env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"export PYTHONPATH={BOOT}{os.pathsep}/x"), result.stdout


# ---- sitecustomize and the lazy hooks ---------------------------------------------


def test_boot_loads_ckpt_without_torch_and_chains_to_the_hidden_sitecustomize(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import builtins\nbuiltins.OTHER_SITECUSTOMIZE_RAN = True\n")
    env = child_env(CKPT_PATCH="torch")
    env["PYTHONPATH"] = os.pathsep.join([str(BOOT), str(other)])  # ckpt itself is not on the path
    code = ("import sys, builtins\n"
            "print('torch' in sys.modules, 'ckpt.autopatch' in sys.modules,"
            " getattr(builtins, 'OTHER_SITECUSTOMIZE_RAN', False), str(sys.modules['ckpt'].__file__))")
    result = run_python(["-c", code], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    torch_loaded, booted, chained, where = result.stdout.split()
    assert (torch_loaded, booted, chained) == ("False", "True", "True")
    assert where == str(SCRIPTS / "ckpt" / "__init__.py")
    # Without libckpt it patches nothing, and says why.
    assert "libckpt is not loaded" in result.stderr and "nothing is patched" in result.stderr


def test_an_unknown_ckpt_patch_value_is_named_in_a_warning(monkeypatch):
    from ckpt import autopatch

    with pytest.warns(RuntimeWarning, match="CKPT_PATCH='tensorflow'.*accepted: torch"):
        assert autopatch.install({"CKPT_PATCH": "tensorflow"}) == []


def test_post_import_hook_runs_after_the_module_executes(tmp_path, monkeypatch):
    (tmp_path / "ckpt_probe_mod.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    postimport.when_imported("ckpt_probe_mod", lambda m: seen.append(m.VALUE + 1))
    assert seen == []
    import ckpt_probe_mod

    assert seen == [42]
    assert type(ckpt_probe_mod.__loader__).__name__ != "_Loader", "the real loader is given back"
    postimport.when_imported("ckpt_probe_mod", lambda m: seen.append(0))  # already imported: at once
    assert seen == [42, 0]
    monkeypatch.delitem(sys.modules, "ckpt_probe_mod")


def test_a_failing_post_import_hook_does_not_break_the_import(tmp_path, monkeypatch):
    (tmp_path / "ckpt_probe_bad.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    postimport.when_imported("ckpt_probe_bad", lambda m: 1 / 0)
    with pytest.warns(RuntimeWarning, match="post-import hook for ckpt_probe_bad failed"):
        import ckpt_probe_bad
    assert ckpt_probe_bad.VALUE == 1
    monkeypatch.delitem(sys.modules, "ckpt_probe_bad")


# ---- the integrations, under the real library ---------------------------------------


def test_ckpt_patch_torch_turns_every_checkpoint_into_a_region(libckpt, tmp_path):
    patched, stderr = run_script(tmp_path, CHECKPOINT_SCRIPT, boot_env(libckpt, CKPT_PATCH="torch"))
    assert patched["booted"] and not patched["started_with_torch"], "torch must load lazily"
    assert patched["regions_opened"] == 4 and patched["regions_closed"] == 4, stderr
    assert patched["calls"]["restore_tensors"] == 4, "each recompute restores its inputs first"

    control, _ = run_script(tmp_path, CHECKPOINT_SCRIPT, child_env(preload=libckpt))
    assert not control["booted"] and control["regions_opened"] == 0
    assert patched["digest"] == control["digest"], "the patch changed the gradients"


def test_ckpt_regions_turns_module_classes_into_regions(libckpt, tmp_path):
    env = boot_env(libckpt, CKPT_REGIONS="TransformerEncoderLayer, NoSuchClass")
    hooked, stderr = run_script(tmp_path, ENCODER_SCRIPT, env)
    assert hooked["booted"] and not hooked["started_with_torch"]
    assert hooked["regions_opened"] == 3 and hooked["regions_closed"] == 3, stderr
    # Backward meets the layers last-first and restores each one's region.
    restored = hooked["calls"]["restore_region"]
    assert len(restored) == 3 and restored == sorted(restored, reverse=True), restored

    control, _ = run_script(tmp_path, ENCODER_SCRIPT, child_env(preload=libckpt))
    assert control["regions_opened"] == 0
    assert hooked["digest"] == control["digest"], "the hooks changed the gradients"


def test_both_integrations_together_count_each_region_once(libckpt, tmp_path):
    script = CHECKPOINT_SCRIPT.replace("nn.GELU()", "Act()").replace(
        "def block():", "class Act(nn.GELU):\n    pass\ndef block():")
    env = boot_env(libckpt, CKPT_PATCH="torch", CKPT_REGIONS="Act")
    both, stderr = run_script(tmp_path, script, env)
    # 4 checkpoint regions, and one region per Act run with autograd recording:
    # 7 Acts run in forward, less the one inside the reentrant checkpoint (its
    # forward records nothing); the recomputes open none.
    assert both["regions_opened"] == 4 + 6 and both["regions_closed"] == 4 + 6, stderr

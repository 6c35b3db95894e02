"""ckpt.checkpointing has every top-level name of DeepSpeed's module.

The reference copy in shared/reference has lost its indentation, so nesting
cannot be read from it: methods are told by their first parameter (self, ctx)
or decorator, and the functions nested inside other functions are listed here
by hand (the test checks that the list still matches the reference).
"""

import re

from conftest import REFERENCE

from ckpt import checkpointing

# Closures defined inside functions of the reference (and one local class).
NESTED_IN_REFERENCE = {
    "cb",  # in _set_cuda_rng_state
    "save_args_for_backward",  # in CheckpointFunction.forward and non_reentrant_checkpoint
    "Holder", "checkpoint_pack", "checkpoint_unpack", "replay_pack", "replay_unpack",
    "after_backward_hook",  # in non_reentrant_checkpoint
}
DEF = re.compile(r"^(def|class)\s+([A-Za-z_]\w*)\s*(?:\(([^)]*))?")
ASSIGN = re.compile(r"^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)")


def reference_lines():
    assert REFERENCE.is_file(), f"the DeepSpeed reference is missing: {REFERENCE}"
    return REFERENCE.read_text().splitlines()


def top_level_definitions():
    """Names of the reference's top-level functions and classes."""
    return [name for name, _ in top_level_definition_lines()]


def top_level_definition_lines():
    """(name, line index) of the reference's top-level functions and classes."""
    lines = reference_lines()
    names, nested_seen = [], set()
    for i, line in enumerate(lines):
        match = DEF.match(line)
        if not match:
            continue
        kind, name, params = match.groups()
        first_param = (params or "").split(",")[0].strip()
        decorated_method = i > 0 and lines[i - 1].strip() in ("@staticmethod", "@classmethod")
        if kind == "def" and (first_param in ("self", "ctx", "cls") or decorated_method):
            continue
        if name in NESTED_IN_REFERENCE:
            nested_seen.add(name)
            continue
        names.append((name, i))
    assert nested_seen == NESTED_IN_REFERENCE, "the list of nested names no longer matches the reference"
    return names


def module_variables():
    """Names assigned at module level: those before the first definition."""
    names = []
    for line in reference_lines():
        if DEF.match(line):
            break
        match = ASSIGN.match(line)
        if match:
            names.append(match.group(1))
    return names


def test_the_parse_finds_the_known_api():
    names = set(top_level_definitions())
    assert {"checkpoint", "non_reentrant_checkpoint", "configure", "is_configured", "reset",
            "CudaRNGStatesTracker", "get_cuda_rng_tracker", "model_parallel_cuda_manual_seed",
            "CheckpointFunction"} <= names
    assert not names & {"forward", "backward", "fork", "add", "__init__"}
    assert {"PARTITION_ACTIVATIONS", "mpu", "num_layers"} <= set(module_variables())


def test_every_public_function_and_class_is_there():
    missing = [n for n in top_level_definitions() if not n.startswith("_") and not hasattr(checkpointing, n)]
    assert not missing, f"ckpt.checkpointing lacks DeepSpeed's {missing}"


def test_private_helpers_that_code_reaches_for_are_there_too():
    missing = [n for n in top_level_definitions() if n.startswith("_") and not hasattr(checkpointing, n)]
    assert not missing, f"ckpt.checkpointing lacks DeepSpeed's {missing}"


def test_every_module_level_setting_is_there():
    missing = [n for n in module_variables() if not hasattr(checkpointing, n)]
    assert not missing, f"ckpt.checkpointing lacks DeepSpeed's module variables {missing}"


def test_public_names_are_callable_with_deepspeeds_parameters():
    import inspect

    lines = reference_lines()
    for name, i in top_level_definition_lines():
        if not lines[i].startswith("def "):
            continue
        # The parameter list may run over several lines (configure's does).
        text, j = lines[i], i
        while text.count("(") > text.count(")"):
            j += 1
            text += lines[j]
        inner = text[text.index("(") + 1:text.rindex(")")]
        params = [p.split("=")[0].strip().lstrip("*") for p in inner.split(",")]
        params = [p for p in params if p]
        ours = list(inspect.signature(getattr(checkpointing, name)).parameters)
        assert ours == params, f"{name}: {ours} != {params}"

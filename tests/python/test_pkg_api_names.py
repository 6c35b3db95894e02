"""ckpt.checkpointing has every top-level name of DeepSpeed's module, with
DeepSpeed's parameter lists. The names are kept in deepspeed_api.py (this
folder): the tests read nothing outside the repository."""

import inspect

import deepspeed_api as ds

from ckpt import checkpointing


def test_the_list_holds_the_known_api():
    names = set(ds.FUNCTIONS) | set(ds.CLASSES)
    assert {"checkpoint", "non_reentrant_checkpoint", "configure", "is_configured", "reset",
            "CudaRNGStatesTracker", "get_cuda_rng_tracker", "model_parallel_cuda_manual_seed",
            "model_parallel_reconfigure_tp_seed", "CheckpointFunction"} <= names
    assert {"PARTITION_ACTIVATIONS", "mpu", "num_layers", "timers"} <= set(ds.MODULE_VARIABLES)


def test_every_public_function_and_class_is_there():
    names = list(ds.FUNCTIONS) + ds.CLASSES
    missing = [n for n in names if not n.startswith("_") and not hasattr(checkpointing, n)]
    assert not missing, f"ckpt.checkpointing lacks DeepSpeed's {missing}"


def test_private_helpers_that_code_reaches_for_are_there_too():
    missing = [n for n in ds.FUNCTIONS if n.startswith("_") and not hasattr(checkpointing, n)]
    assert not missing, f"ckpt.checkpointing lacks DeepSpeed's {missing}"


def test_every_module_level_setting_is_there():
    missing = [n for n in ds.MODULE_VARIABLES if not hasattr(checkpointing, n)]
    assert not missing, f"ckpt.checkpointing lacks DeepSpeed's module variables {missing}"


def test_classes_have_the_methods_code_calls():
    for cls, methods in ds.METHODS.items():
        missing = [m for m in methods if not hasattr(getattr(checkpointing, cls), m)]
        assert not missing, f"{cls} lacks {missing}"


def test_public_names_are_callable_with_deepspeeds_parameters():
    for name, params in ds.FUNCTIONS.items():
        ours = list(inspect.signature(getattr(checkpointing, name)).parameters)
        assert ours == params + ds.EXTENSIONS.get(name, []), f"{name}: {ours} != {params}"


def test_varargs_are_where_deepspeed_has_them():
    sig = inspect.signature(checkpointing.checkpoint).parameters
    assert sig["args"].kind is inspect.Parameter.VAR_POSITIONAL
    assert sig["kwargs"].kind is inspect.Parameter.VAR_KEYWORD

"""The public surface of DeepSpeed's deepspeed.checkpointing module
(deepspeed/runtime/activation_checkpointing/checkpointing.py), as names and
parameter lists only: what code written against DeepSpeed calls or reads.

Taken from the module of DeepSpeed 0.16 that ckpt.checkpointing was written
against, plus what DeepSpeed >= 0.19.4 added (checkpoint's **kwargs,
model_parallel_reconfigure_tp_seed). Kept here so that the tests never read
outside the repository. A `*args` / `**kwargs` parameter is listed by its name.
"""

# Top-level functions: name -> parameter names, in order.
FUNCTIONS = {
    "detach_variable": ["inputs", "device"],
    "_set_cuda_rng_state": ["new_state", "device"],
    "get_cuda_rng_tracker": [],
    "model_parallel_cuda_manual_seed": ["seed"],
    "model_parallel_reconfigure_tp_seed": ["seed"],  # DeepSpeed >= 0.19.4
    "get_partition_start": ["item"],
    "get_partition_size": ["item"],
    "gather_partitioned_activations": ["tensors", "device"],
    "extract_tensors": ["all_objects"],
    "merge_tensors": ["tensor_objects", "non_tensor_objects", "tensor_flags"],
    "is_activation_to_checkpoint": ["item"],
    "partition_activations": ["args", "cpu_checkpoint", "contiguous_checkpoint"],
    "get_partitioned_activations_for_backward": ["args", "inputs", "contiguous_checkpoint"],
    "get_cpu_activations_for_backward": ["args", "inputs"],
    "non_reentrant_checkpoint": ["function", "args"],
    "checkpoint": ["function", "args", "kwargs"],  # **kwargs since DeepSpeed 0.19.4
    "partition_activations_in_checkpoint": ["partition_activation"],
    "set_num_layers": ["nlayers"],
    "reset": [],
    "_configure_using_config_file": ["config", "mpu"],
    "_configure_defaults": [],
    "configure": ["mpu_", "deepspeed_config", "partition_activations", "contiguous_checkpointing",
                  "num_checkpoints", "checkpoint_in_cpu", "synchronize", "profile"],
    "is_configured": [],
}

# Parameters ckpt adds at the end of DeepSpeed's list (never in the middle).
EXTENSIONS = {
    "non_reentrant_checkpoint": ["kwargs"],
}

CLASSES = ["CudaRNGStatesTracker", "CheckpointFunction"]

# Methods code calls on those classes.
METHODS = {
    "CudaRNGStatesTracker": ["reset", "get_states", "set_states", "add", "fork"],
    "CheckpointFunction": ["forward", "backward", "apply"],
}

# Module-level variables, in the order DeepSpeed assigns them.
MODULE_VARIABLES = [
    "deepspeed_checkpointing_enabled", "mpu", "mp_rank", "mp_size", "mp_group", "num_layers",
    "contiguous_data_buffers", "data_offsets", "contiguous_size_buffers", "size_offsets", "timers",
    "PARTITION_ACTIVATIONS", "CPU_CHECKPOINT", "CONTIGUOUS_CHECKPOINTING", "SYNCHRONIZE", "PROFILE_TIME",
    "_MODEL_PARALLEL_RNG_TRACKER_NAME", "transport_stream", "cuda_device",
]

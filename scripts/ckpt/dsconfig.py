"""The `activation_checkpointing` section of a DeepSpeed JSON config, checked.

Accepts what deepspeed.checkpointing.configure(deepspeed_config=...) accepts: a
path to the JSON file or the config as a dict (the whole config, or just the
section). Unlike DeepSpeed, a mistake is not silently ignored: an unknown key
or a value of the wrong type raises ConfigError naming the key. ConfigError is
both a ValueError and an AssertionError (DeepSpeed asserts), so code written
for either catches it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Union

SECTION = "activation_checkpointing"


class ConfigError(ValueError, AssertionError):
    """A configuration mistake: a ValueError, and an AssertionError as DeepSpeed raises."""


@dataclass
class ActivationCheckpointingConfig:
    """The section's keys, DeepSpeed's names and defaults."""

    partition_activations: bool = False
    contiguous_memory_optimization: bool = False
    number_checkpoints: Optional[int] = None
    cpu_checkpointing: bool = False
    synchronize_checkpoint_boundary: bool = False
    profile: bool = False


KEYS = tuple(f.name for f in fields(ActivationCheckpointingConfig))


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def check_count(key: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer or null, got {value!r}")
    return value


def _load(config: Union[str, os.PathLike, Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(config, Mapping):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        try:
            with open(path) as f:
                loaded = json.load(f)
        except OSError as exc:
            raise ConfigError(f"deepspeed_config: cannot read {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"deepspeed_config: {path} is not valid JSON: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"deepspeed_config: {path} must hold a JSON object")
        return loaded
    raise ConfigError(f"deepspeed_config must be a path or a dict, got {type(config).__name__}")


def parse(config: Union[str, os.PathLike, Mapping[str, Any]]) -> ActivationCheckpointingConfig:
    """The checked section of `config` (defaults where the section or a key is absent).

    A dict whose keys are all section keys is taken to be the section itself.
    """
    whole = _load(config)
    if SECTION in whole:
        section = whole[SECTION]
        where = SECTION + "."
        if not isinstance(section, Mapping):
            raise ConfigError(f"{SECTION} must be a JSON object, got {section!r}")
    elif whole and all(key in KEYS for key in whole):
        section, where = whole, ""
    else:
        section, where = {}, ""
    for key in section:
        if key not in KEYS:
            raise ConfigError(f"unknown key {where}{key} (known: {', '.join(KEYS)})")
    result = ActivationCheckpointingConfig()
    for key, value in section.items():
        if key == "number_checkpoints":
            setattr(result, key, check_count(where + key, value))
        else:
            setattr(result, key, check_bool(where + key, value))
    return result

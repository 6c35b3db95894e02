"""configure() and the activation_checkpointing section of DeepSpeed JSON configs."""

import json
import warnings

import pytest

from ckpt import checkpointing as cp
from ckpt import dsconfig

FULL = {
    "train_batch_size": 8,
    "activation_checkpointing": {
        "partition_activations": False,
        "cpu_checkpointing": True,
        "contiguous_memory_optimization": False,
        "number_checkpoints": 12,
        "synchronize_checkpoint_boundary": True,
        "profile": False,
    },
}


@pytest.fixture(autouse=True)
def fresh_module_state(monkeypatch):
    """Each test starts from an unconfigured module, and leaves it so."""
    for name in ("deepspeed_checkpointing_enabled", "mpu", "mp_rank", "mp_size", "mp_group", "num_layers",
                 "PARTITION_ACTIVATIONS", "CPU_CHECKPOINT", "CONTIGUOUS_CHECKPOINTING", "SYNCHRONIZE",
                 "PROFILE_TIME"):
        monkeypatch.setattr(cp, name, getattr(cp, name))
    monkeypatch.setattr(cp, "_warned", set())


def settings():
    return (cp.PARTITION_ACTIVATIONS, cp.CPU_CHECKPOINT, cp.CONTIGUOUS_CHECKPOINTING, cp.num_layers,
            cp.SYNCHRONIZE, cp.PROFILE_TIME)


def test_parse_a_whole_config_dict_a_section_dict_and_a_file(tmp_path):
    expected = dsconfig.ActivationCheckpointingConfig(
        partition_activations=False, cpu_checkpointing=True, contiguous_memory_optimization=False,
        number_checkpoints=12, synchronize_checkpoint_boundary=True, profile=False)
    assert dsconfig.parse(FULL) == expected
    assert dsconfig.parse(FULL["activation_checkpointing"]) == expected
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(FULL))
    assert dsconfig.parse(str(path)) == expected
    assert dsconfig.parse(path) == expected


def test_absent_section_and_absent_keys_take_deepspeed_defaults():
    assert dsconfig.parse({"train_batch_size": 1}) == dsconfig.ActivationCheckpointingConfig()
    assert dsconfig.parse({"activation_checkpointing": {"profile": True}}).profile is True
    assert dsconfig.parse({"activation_checkpointing": {}}).number_checkpoints is None


@pytest.mark.parametrize("section, key", [
    ({"partition_activation": True}, "activation_checkpointing.partition_activation"),
    ({"cpu_checkpointing": "yes"}, "activation_checkpointing.cpu_checkpointing"),
    ({"profile": 1}, "activation_checkpointing.profile"),
    ({"number_checkpoints": 0}, "activation_checkpointing.number_checkpoints"),
    ({"number_checkpoints": "4"}, "activation_checkpointing.number_checkpoints"),
    ({"number_checkpoints": True}, "activation_checkpointing.number_checkpoints"),
])
def test_mistakes_in_the_section_raise_value_error_naming_the_key(section, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        dsconfig.parse({"activation_checkpointing": section})


def test_mistakes_in_the_file_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="activation_checkpointing must be a JSON object"):
        dsconfig.parse({"activation_checkpointing": [1]})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        dsconfig.parse(str(bad))
    with pytest.raises(ValueError, match="cannot read"):
        dsconfig.parse(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="path or a dict"):
        dsconfig.parse(42)


def test_configure_from_a_file_and_keyword_overrides(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(FULL))
    assert not cp.is_configured()
    cp.configure(None, deepspeed_config=str(path), synchronize=False, num_checkpoints=24)
    assert cp.is_configured()
    assert settings() == (False, True, False, 24, False, False)


def test_configure_defaults_then_arguments():
    mpu = object()
    cp.configure(mpu, checkpoint_in_cpu=True, profile=True)
    assert cp.mpu is mpu
    assert settings() == (False, True, False, None, False, True)
    cp.configure(None)  # starts over from the defaults, keeps the mpu
    assert settings() == (False, False, False, None, False, False) and cp.mpu is mpu


@pytest.mark.parametrize("kwargs, key", [
    ({"partition_activations": "true"}, "partition_activations"),
    ({"checkpoint_in_cpu": 1}, "checkpoint_in_cpu"),
    ({"num_checkpoints": -1}, "num_checkpoints"),
    ({"contiguous_checkpointing": True, "num_checkpoints": 4}, "partition_activations"),
    ({"contiguous_checkpointing": True, "partition_activations": True}, "number_checkpoints"),
    ({"deepspeed_config": {"activation_checkpointing": {"cpu_checkpoint": True}}},
     "activation_checkpointing.cpu_checkpoint"),
])
def test_configure_mistakes_raise_value_error_and_change_nothing(kwargs, key):
    cp.configure(None, checkpoint_in_cpu=True)
    before = settings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=key):
            cp.configure(None, **kwargs)
    assert settings() == before


def test_partition_activations_without_libckpt_is_accepted_with_one_warning():
    with pytest.warns(RuntimeWarning, match="peer partitioning.*not loaded.*nothing is partitioned") as record:
        cp.configure(None, partition_activations=True, contiguous_checkpointing=True, num_checkpoints=8)
        cp.partition_activations_in_checkpoint(True)
    assert len([w for w in record if "peer partitioning" in str(w.message)]) == 1
    assert cp.PARTITION_ACTIVATIONS and cp.CONTIGUOUS_CHECKPOINTING and cp.num_layers == 8


def test_small_setters():
    cp.set_num_layers(5)
    assert cp.num_layers == 5
    cp.partition_activations_in_checkpoint(False)
    assert cp.PARTITION_ACTIVATIONS is False
    cp.reset()
    assert cp.contiguous_data_buffers == [] and cp.size_offsets == []

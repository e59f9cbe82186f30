"""Recipe validation: every key is checked, and errors name the key and the closest valid one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftlab.config import config_hash, load_config, validate
from sftlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = {"model": {"base": "offline:gemma-3-270m"}, "data": {"source": "sharegpt"}}


def test_shipped_configs_are_valid():
    import yaml

    from sftlab.sweep import load_sweep

    names = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert "default" in names and "ablations" in names
    for path in (ROOT / "configs").glob("*.yaml"):
        if "variants" in (yaml.safe_load(path.read_text()) or {}):  # a sweep file (sftlab sweep)
            assert len(load_sweep(path)["recipes"]) >= 9
            continue
        config = load_config(path)
        assert config["name"] == path.stem


@pytest.mark.parametrize(
    "section,key,suggestion",
    [
        ("training", "learning_rte", "learning_rate"),
        ("training", "loss_chunk_sise", "loss_chunk_size"),  # sftlab's own training key is suggested too
        ("lora", "lora_alpah", "lora_alpha"),
        ("model", "templte", "template"),
        ("data", "max_token", "max_tokens"),
        ("evaluation", "max_new_token", "max_new_tokens"),
    ],
)
def test_unknown_key_is_named_with_closest_valid_key(section, key, suggestion):
    config = {**BASE, section: {**BASE.get(section, {}), key: 1}}
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert f"'{section}.{key}'" in str(err.value) and f"'{suggestion}'" in str(err.value)


def test_sftlab_training_keys_sit_beside_sftconfig_fields():
    assert validate({**BASE, "training": {"learning_rate": 1e-4, "loss_chunk_size": 128}})


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'xyzzy'.*valid keys"):
        validate({**BASE, "xyzzy": 1})


def test_required_keys_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="model.base"):
        validate({"model": {"template": "gemma"}})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_hash_ignores_key_order_but_not_values(tmp_path):
    a = {"seed": 1, "model": {"base": "x", "dtype": "float32"}}
    b = {"model": {"dtype": "float32", "base": "x"}, "seed": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 2})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE}))
    assert load_config(path)["name"] == "r"

"""Recipe validation: the whole recipe is checked before anything loads, every problem is reported
at once naming the file, the key path and what is expected, and the recipe is never changed."""

from __future__ import annotations

from pathlib import Path

import copy
import json

import pytest
import yaml

from sftlab.config import RULES, config_hash, load_config, recipe_problems, validate
from sftlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# bf16 stated: TRL's default (on) needs a GPU with bf16, and the check builds the SFTConfig
BASE = {"model": {"base": "offline:gemma-3-270m"}, "data": {"source": "sharegpt"}, "training": {"bf16": False}}


def _keys(config: dict, where: str = "r.yaml") -> dict[str, str]:
    """key path -> message of every problem of `config`."""
    return {p.key: p.message for p in recipe_problems(config, where)}


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
    assert f"{section}.{key}: unknown key; did you mean '{suggestion}'?" in str(err.value)


def test_sftlab_training_keys_sit_beside_sftconfig_fields():
    assert validate({**BASE, "training": {"bf16": False, "learning_rate": 1e-4, "loss_chunk_size": 128}})


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="xyzzy: unknown key; valid keys: data, evaluation"):
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


def test_a_recipe_with_only_a_name_lists_every_missing_required_key(tmp_path):
    path = tmp_path / "only-name.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{path}: ") and "problems" in lines[0]
    assert any(line.strip().startswith(f"{path}: model.base: required, missing") and "offline:gemma-3-270m" in line
               for line in lines)
    assert any(line.strip().startswith(f"{path}: data.source: required, missing") for line in lines)
    assert {p.key for p in err.value.problems} >= {"model.base", "data.source"}


def test_every_problem_is_reported_together_with_what_is_expected():
    config = {**BASE, "model": {"base": "offline:gemma-3-270m", "templte": "gemma", "dtype": "float8"},
              "data": {"source": "sharegpt", "eval_size": -1, "min_turns": 4, "max_turns": 2},
              "lora": {"r": "16"}, "training": {"bf16": "yes", "learning_rate": "5e-4"},
              "evaluation": {"systems": ["sft", "chatgpt"], "ifeval": "true"}}
    problems = _keys(config)
    assert problems == {
        "model.templte": "unknown key; did you mean 'template'?",
        "model.dtype": 'expected one of float32, bfloat16, float16, auto, got "float8"; did you mean \'float32\'?',
        "data.eval_size": "expected a whole number >= 1 or null, got -1",
        "data.min_turns": "4 is above data.max_turns (2): no conversation passes",
        "lora.r": 'expected a whole number >= 1, got "16" (text, not a number: drop the quotes)',
        "training.bf16": 'expected one of true, false, auto, got "yes"',
        "training.learning_rate": 'expected a number > 0, got "5e-4" (YAML reads 5e-4 as text: write 5.0e-4)',
        "evaluation.systems": ('expected a list (each one of base_continuation, base_chat, sft, sft_continuation, '
                               'reference), got ["sft", "chatgpt"]'),
        "evaluation.ifeval": 'expected true or false, got "true"',
    }
    with pytest.raises(ConfigError) as err:
        validate(config, "configs/mine.yaml")
    assert len(err.value.problems) == len(problems)
    assert all(line.startswith("  configs/mine.yaml: ") for line in str(err.value).splitlines()[1:])


def test_a_bare_no_read_by_yaml_as_false_is_named():
    config = yaml.safe_load("training: {bf16: false, eval_strategy: no}")
    assert "quote it" in _keys({**BASE, **config})["training.eval_strategy"]


def test_the_libraries_own_refusals_name_the_key():
    # Valid types, refused by the constructors' own checks (the dry run builds them as training does).
    lora = _keys({**BASE, "lora": {"layers_pattern": "layers"}})
    assert lora["lora.layers_pattern"].startswith("peft.LoraConfig refused it: When `layers_pattern` is specified")
    training = _keys({**BASE, "training": {"bf16": False, "load_best_model_at_end": True, "eval_strategy": "steps",
                                           "save_strategy": "epoch"}})
    assert training["training.load_best_model_at_end"].startswith("trl.SFTConfig refused it: --load_best_model_at_end")
    assert _keys({**BASE, "training": {"bf16": False, "optim": "adamw_trch"}})["training.optim"].endswith(
        "did you mean 'adamw_torch'?")


def test_training_without_bf16_runs_anywhere():
    # TRL's own default turns bf16 on, which a machine without bf16 refuses; sftlab reads a missing
    # bf16 as auto (bf16 where the hardware has it), so a recipe that leaves it out still trains.
    from sftlab.train import build_sft_config

    assert "training.bf16" not in _keys({**BASE, "training": {"learning_rate": 1e-4}})
    args = build_sft_config({"learning_rate": 1e-4}, "/tmp/sftlab-bf16-default", seed=0)
    import torch

    cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    expected = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else bool(cpu_bf16)
    assert args.bf16 is expected


def test_sections_that_are_not_mappings_and_nested_keys_are_checked():
    problems = _keys({**BASE, "lora": [1], "data": {"source": "sharegpt", "instructions": {"sahre": 0.3}}})
    assert problems == {"lora": "expected a mapping of keys or null, got [1]",
                        "data.instructions.sahre": "unknown key; did you mean 'share'?",
                        "data.instructions.share": ("required, missing (share of training conversations replaced "
                                                    "(0 to 1)); e.g. share: 0.3")}
    assert "expected a mapping such as {share: 0.3}" in _keys({**BASE, "data": {"source": "sharegpt",
                                                                                "instructions": 0.3}})["data.instructions"]


def test_a_data_file_that_is_not_there_is_named(tmp_path):
    missing = tmp_path / "convs.jsonl"
    assert "an existing .jsonl file" in _keys({**BASE, "data": {"source": str(missing)}})["data.source"]
    missing.write_text("{}\n")
    assert "data.source" not in _keys({**BASE, "data": {"source": str(missing)}})


def test_validation_leaves_the_recipe_and_its_hash_unchanged():
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    before = copy.deepcopy(config)
    validate(config)
    assert config == before
    bad = {**copy.deepcopy(before), "training": {"bf16": "maybe"}}
    kept = copy.deepcopy(bad)
    with pytest.raises(ConfigError):
        validate(bad)
    assert bad == kept


def test_committed_runs_recipes_are_valid_and_keep_their_hash():
    """results/*/run.json records config_hash; reading and checking a recipe must not move it.
    (A trial's config.yaml may name a key added after it ran: results/trials/README.md.)"""
    recipes = list((ROOT / "results").glob("**/config.yaml"))
    assert any(p.parent.name == "default" for p in recipes)
    for path in recipes:
        recipe = yaml.safe_load(path.read_text())
        before = config_hash(recipe)
        assert recipe_problems(recipe, str(path)) == [], path
        assert config_hash(validate(recipe)) == before, path
    default = json.loads((ROOT / "results" / "default" / "run.json").read_text())
    assert config_hash(load_config(ROOT / default["config_path"])) == default["config_hash"] == "823e988ad135ceba"
    assert config_hash(yaml.safe_load((ROOT / "results" / "default" / "config.yaml").read_text())) == "823e988ad135ceba"


def test_every_rule_is_a_documented_key_and_a_key_without_a_rule_takes_any_value(monkeypatch):
    """RULES types the documented keys; a key added to a table without a line there (another
    section's owner's) is accepted with any value, never refused as unknown."""
    from sftlab import config as cfg
    from sftlab.data import DATA_KEYS
    from sftlab.data.prepare import INSTRUCTION_KEYS

    tables = {"": cfg.TOP_KEYS, "model": cfg.MODEL_KEYS, "data": DATA_KEYS, "data.instructions": INSTRUCTION_KEYS,
              "evaluation": cfg.EVAL_KEYS, "training": cfg.TRAINING_KEYS}
    for path in RULES:
        section, _, key = path.rpartition(".")
        if section not in ("lora", "training"):  # those also rule library fields
            assert key in tables[section], f"RULES[{path!r}] names no documented key"
    monkeypatch.setitem(cfg.EVAL_KEYS, "judge_model", "a new key without a rule")
    assert validate({**BASE, "evaluation": {"judge_model": {"any": ["value"]}}})
    assert "evaluation.judge_modle: unknown key; did you mean 'judge_model'?" in str(
        pytest.raises(ConfigError, validate, {**BASE, "evaluation": {"judge_modle": 1}}).value)

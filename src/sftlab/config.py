"""Run recipes: one YAML file holds a whole experiment, and every key is checked.

The `lora` and `training` sections use PEFT's `LoraConfig` and TRL's `SFTConfig`
field names as they are, so a reader who knows those libraries already knows the
file (the alignment-handbook convention). Our own keys are documented once, below.
A misspelt key is an error that names it and suggests the closest valid one:
a silently ignored `learning_rte` would waste a 45-minute run.

`validate` checks a whole recipe before any model, data or work folder is touched, and
reports every problem at once (a ConfigError whose lines each name the file, the key path
and what is expected): unknown keys, required keys (`RULES`: `model.base`, `data.source`),
the type and range of every key sftlab defines (`RULES`, one line per key; a key documented
below without a rule takes any value), the `lora` and `training` keys against the type hints
of `peft.LoraConfig` and `trl.SFTConfig`, which are then built once as a dry run, as training
builds them (`sftlab.train.build_lora_config`, `build_sft_config`), so that their own errors
surface at once. It never changes the recipe (nor its `config_hash`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, Problem
from .schema import Key, check_section, dataclass_keys, either, flag, list_of, mapping, number, one_of, text, whole

TOP_KEYS = {
    "name": "run name; results go to results/<name>/ (default: the file's stem)",
    "seed": "seed for data sampling, LoRA initialisation and training order",
    "model": "which models to load and how to format chats (see MODEL_KEYS)",
    "data": "conversational data source, filters and split sizes (see sftlab.data.DATA_KEYS)",
    "lora": "peft.LoraConfig fields",
    "training": "trl.SFTConfig fields, plus sftlab's own (see TRAINING_KEYS)",
    "evaluation": "prompt sets, decoding and metrics (see EVAL_KEYS)",
    "preference": "a stage after training that learns from the SFT model's own checked samples: DPO or "
                  "rejection sampling (see PREFERENCE_KEYS; off when absent)",
}

MODEL_KEYS = {
    "base": "model spec of the base model: offline:NAME, a Hub id, or a local folder",
    "reference": "model spec of the published post-trained model to compare with (null: none)",
    "template": "chat template for the base model: gemma | chatml",
    "reference_template": "chat template for the reference model (native: its own)",
    "dtype": "weights dtype when loading: float32 | bfloat16 | float16 | auto",
    "allow_new_tokens": "let the template add missing turn tokens (trained via trainable_token_indices)",
}

# sftlab's own `training` keys, beside trl.SFTConfig's fields; `sftlab.train.build_sft_config`
# takes them out before building the SFTConfig.
TRAINING_KEYS = {
    "loss_chunk_size": "labelled positions per output-layer chunk, each chunk's gradients computed at once so "
                       "its logits are freed (null: 256 under gradient checkpointing, otherwise all at once)",
}

EVAL_KEYS = {
    "systems": "which systems to evaluate: base_continuation, base_chat, sft, sft_continuation, reference",
    "heldout_size": "held-out conversations to generate replies for (<= data.eval_size)",
    "ifeval": "run the instruction-following prompt set (true/false)",
    "multiturn": "run the multi-turn probes: does the last reply use a fact from an earlier turn (true/false)",
    "max_new_tokens": "token limit for every reply (greedy decoding)",
    "batch_size": "prompts generated together (left padding)",
    "embedding_similarity": "score replies against references with all-MiniLM-L6-v2",
    "bootstrap_resamples": "resamples for the 95% bootstrap intervals",
    "loss_batches": "held-out batches for the assistant-token loss (null: all)",
    "plain_text": "passages of plain prose (Python's reference pages, no template) on which base and SFT "
                  "loss are compared: what training forgot (0: none; sftlab.plaintext)",
    "extra_sets": "sets `sftlab evaluate-extra` adds at the end of a run: qa, ood, decoding, judge, "
                  "official_ifeval, plain_text (sftlab.extra; [] none)",
    "qa_max_new_tokens": "token limit for replies to the questions with checkable answers (sftlab.qa)",
    "decoding": "decoding-robustness subset and settings: {heldout: N, ifeval: N, temperature: T, seeds: [..], "
                "long_max_new_tokens: N} (sftlab.extra)",
    "judge": "model spec of a pairwise judge (a local folder or a Hub id; null: none, sftlab.judge)",
    "official_ifeval": "score google/IFEval with the official checkers; needs the Hub (sftlab.official_ifeval)",
}

# The `preference:` section (sftlab.preference; defaults and checks in sftlab.preference.recipe).
PREFERENCE_KEYS = {
    "method": "dpo (trl.DPOTrainer on chosen/rejected pairs) | rft (rejection sampling: SFT on the chosen "
              "replies only); default dpo",
    "sft_run": "a finished run folder whose SFT adapter this run starts from, reusing its replies where the "
               "prompts and decoding are the same (its seed, model, data, lora and training must equal this "
               "recipe's); null: train SFT in this run",
    "samples_from": "a finished preference run whose prompts, samples and pairs this run trains on (its "
                    "sampling settings must be this recipe's; only the method and training differ); null: "
                    "sample here",
    "prompts": "instruction prompts (1-2 checkable instructions each) made from training conversations",
    "plain_prompts": "plain training prompts beside them, so that general replies are not forgotten",
    "types": "instruction types to draw from (default: all, sftlab.data.instructions.TYPE_NAMES)",
    "samples": "replies sampled per prompt from the merged SFT model (k)",
    "temperature": "sampling temperature (no top-k or top-p cut)",
    "max_new_tokens": "token limit per sample (null: evaluation.max_new_tokens)",
    "batch_size": "sequences sampled together (null: evaluation.batch_size)",
    "repair": "where no sample passes, the best usable one repaired by the instruction rewrite is the chosen "
              "reply (true/false; default true)",
    "seed": "seed for the prompt pool, the samples and the pairs (null: the run's seed)",
    "lora": "peft.LoraConfig fields of the new adapter (null: the recipe's lora, without trainable tokens)",
    "training": "trl.DPOConfig fields (method dpo) or trl.SFTConfig fields (method rft)",
}

# What a run (and `sftlab rescore`) uses for an evaluation key the recipe leaves out.
EVAL_DEFAULTS = {
    "systems": ["base_continuation", "base_chat", "sft", "sft_continuation", "reference"],
    "heldout_size": 40,
    "ifeval": True,
    "multiturn": True,
    "max_new_tokens": 128,
    "batch_size": 8,
    "embedding_similarity": True,
    "bootstrap_resamples": 1000,
    "loss_batches": None,
    "plain_text": 0,
    "extra_sets": ["qa", "ood"],
    "qa_max_new_tokens": 64,
    "decoding": None,  # sftlab.extra.DECODING_DEFAULTS
    "judge": None,
    "official_ifeval": False,
}


def _data_keys() -> dict:
    from .data import DATA_KEYS

    return DATA_KEYS


def _instruction_keys() -> dict:
    from .data.prepare import INSTRUCTION_KEYS

    return INSTRUCTION_KEYS


def _instruction_types() -> tuple[str, ...]:
    from .data.instructions import TYPE_NAMES

    return TYPE_NAMES


def _templates() -> list[str]:
    from .chat import TEMPLATES

    return sorted(TEMPLATES)


def _lora_class():
    from peft import LoraConfig

    return LoraConfig


def _sft_class():
    from trl import SFTConfig

    return SFTConfig


def _lora_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(_lora_class())}


def _training_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(_sft_class())} | set(TRAINING_KEYS)


def _data_source(value: Any) -> bool:
    from .data.readers import OFFLINE_SOURCES

    if not isinstance(value, str):
        return False
    if value in OFFLINE_SOURCES or (value.startswith("hub:") and len(value) > 4):
        return True
    path = value[6:] if value.startswith("jsonl:") else value if value.endswith(".jsonl") else None
    try:
        return path is not None and Path(path).is_file()
    except (OSError, ValueError):  # a name no file can have (too long, a NUL byte): not an existing file
        return False


_NAME = re.compile(r"[^./\\\s]([^/\\]*[^/\\\s])?")  # results/NAME/ and results/.work-NAME/
_TOKENS = list_of(either(text(), whole(0)), what="a list of token names or ids")

# What each key sftlab defines takes, by key path (the docs are in the *_KEYS tables above and in
# sftlab.data); `lora` and `training` keys without a line here are checked against the
# library's own type hints. A new key needs a line here, or it takes any value.
RULES: dict[str, Key] = {
    "name": Key("a folder name (text without '/', not starting with '.')",
                lambda v: isinstance(v, str) and bool(_NAME.fullmatch(v))),
    "seed": whole(0, 2**32 - 1),
    # Sections: null is an empty section; `model` and `data` are required through their required keys.
    "model": mapping(null=True),
    "data": mapping(null=True),
    "lora": mapping(null=True),
    "training": mapping(null=True),
    "evaluation": mapping(null=True),
    "preference": mapping("a mapping of sftlab.config.PREFERENCE_KEYS (sftlab.preference.recipe checks them)",
                          null=True),
    "model.base": text(required=True, example="offline:gemma-3-270m"),
    "model.reference": text(null=True),
    "model.template": one_of(_templates),
    "model.reference_template": one_of(_templates),
    "model.dtype": one_of("float32", "bfloat16", "float16", "auto"),
    "model.allow_new_tokens": flag(),
    # data: null is the default (sftlab.data.DATA_DEFAULTS), for every key but `source`
    "data.source": Key("sharegpt, chitchat, hub:ORG/NAME or an existing .jsonl file (or jsonl:PATH)",
                       _data_source, required=True, example="sharegpt"),
    "data.split": text(null=True),
    "data.limit": whole(0, null=True),
    "data.english_only": flag(null=True),
    "data.min_tokens": whole(0, null=True),
    "data.max_tokens": whole(1, null=True),
    "data.min_turns": whole(0, null=True),
    "data.max_turns": whole(1, null=True),
    "data.strict_english": flag(null=True),
    "data.min_prompt_words": whole(0, null=True),
    "data.drop_context_prompts": flag(null=True),
    "data.dedupe": flag(null=True),
    "data.instructions": mapping("a mapping such as {share: 0.3}", null=True),
    "data.loss_on": one_of("replies", "all", null=True),
    "data.train_size": whole(0, null=True),
    "data.eval_size": whole(1, null=True),
    "data.instructions.share": number(0, 1, required=True, example="0.3"),
    "data.instructions.seed": whole(0, 2**32 - 1),
    "data.instructions.types": list_of(one_of(_instruction_types), nonempty=True, null=True),
    "data.instructions.binding_limits": flag(),
    "data.instructions.more_phrasings": flag(),
    "data.instructions.extra": whole(0, null=True),
    "evaluation.systems": list_of(one_of(*EVAL_DEFAULTS["systems"])),
    "evaluation.heldout_size": whole(1),
    "evaluation.ifeval": flag(),
    "evaluation.multiturn": flag(),
    "evaluation.max_new_tokens": whole(1),
    "evaluation.batch_size": whole(1),
    "evaluation.embedding_similarity": flag(),
    "evaluation.bootstrap_resamples": whole(1),
    "evaluation.loss_batches": whole(1, null=True),
    "evaluation.plain_text": whole(0, null=True),
    "evaluation.extra_sets": list_of(one_of("qa", "ood", "decoding", "judge", "official_ifeval", "plain_text")),
    "evaluation.qa_max_new_tokens": whole(1),
    "evaluation.decoding": mapping("a mapping such as {heldout: 30, ifeval: 60} (sftlab.extra checks its keys)",
                                   null=True),
    "evaluation.judge": text(null=True),
    "evaluation.official_ifeval": flag(),
    # sftlab's own training keys and values, and ranges for the library keys every recipe sets
    "training.loss_chunk_size": whole(1, null=True),
    "training.bf16": one_of(True, False, "auto"),
    "training.assistant_only_loss": Key("false (sftlab's encoder supplies the assistant masks; TRL's option "
                                        "re-renders the template from text, which is not injection-safe)",
                                        lambda v: v is False),
    "training.learning_rate": number(0, lo_open=True),
    "training.num_train_epochs": number(0, lo_open=True),
    "training.per_device_train_batch_size": whole(1),
    "training.per_device_eval_batch_size": whole(1),
    "training.gradient_accumulation_steps": whole(1),
    "training.max_length": whole(1, null=True),
    "lora.r": whole(1),
    "lora.lora_alpha": number(0, lo_open=True),
    "lora.lora_dropout": number(0, 1, hi_open=True),
    # names ("<end_of_turn>") as well as ids: sftlab.train.resolve_token_indices
    "lora.trainable_token_indices": either(_TOKENS, mapping("a mapping of module name to such a list"), null=True),
}


def _sections() -> dict[str, tuple[Any, Any]]:
    """Section path -> (its valid keys, the fallback check for keys without a rule)."""
    lora_hints, sft_hints = dataclass_keys(_lora_class()), dataclass_keys(_sft_class())
    return {"": (TOP_KEYS, None), "model": (MODEL_KEYS, None), "data": (_data_keys(), None),
            "data.instructions": (_instruction_keys(), None), "evaluation": (EVAL_KEYS, None),
            "lora": (_lora_keys(), lora_hints.get), "training": (_training_keys(), sft_hints.get)}


def _at(config: dict, path: str) -> Any:
    value = config
    for part in path.split(".") if path else []:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _across_keys(config: dict, where: str) -> list[Problem]:
    """Problems no single key shows: bounds that contradict each other, a key another one needs."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    problems = []
    for low, high in (("min_tokens", "max_tokens"), ("min_turns", "max_turns")):
        a, b = data.get(low), data.get(high)
        if isinstance(a, int) and isinstance(b, int) and a > b:
            problems.append(Problem(where, f"data.{low}", f"{a} is above data.{high} ({b}): no conversation passes"))
    extra = (data.get("instructions") or {}).get("extra") if isinstance(data.get("instructions"), dict) else None
    if extra and data.get("max_tokens") is None:
        problems.append(Problem(where, "data.instructions.extra", "needs data.max_tokens: its examples come from "
                                "the conversations longer than that, cut down to fit it"))
    return problems


def _refused(where: str, section_name: str, library: str, exc: Exception, given: dict, fields) -> Problem:
    """A library constructor's error as a Problem naming the key its message mentions."""
    message = " ".join(str(exc).split())[:400] or type(exc).__name__
    named = sorted((m.start(), k) for k in {*given, *fields}
                   if (m := re.search(rf"(?<![A-Za-z0-9_]){re.escape(str(k))}(?![A-Za-z0-9_])", message)))
    key = next((k for _, k in named if k in given), named[0][1] if named else "")
    path = f"{section_name}.{key}" if key else section_name
    return Problem(where, path, f"{library} refused it: {message}")


def _build_once(config: dict, where: str, sections: set[str]) -> list[Problem]:
    """Build `peft.LoraConfig` and `trl.SFTConfig` from `sections` of the recipe as training builds
    them (no model, no tokenizer: token names stand for id 0); their errors become Problems."""
    from .train import build_lora_config, build_sft_config

    problems = []
    seed = config.get("seed", 0) if isinstance(config.get("seed", 0), int) else 0
    with warnings.catch_warnings():  # deprecation notices: the run itself shows them once
        warnings.simplefilter("ignore")
        if "lora" in sections:
            lora = dict(config.get("lora") or {})
            try:
                build_lora_config(lora, None, None)
            except Exception as exc:  # every refusal is reported as the recipe's problem, naming the key
                problems.append(_refused(where, "lora", "peft.LoraConfig", exc, lora, _lora_keys()))
        if "training" in sections:
            training = dict(config.get("training") or {})
            with tempfile.TemporaryDirectory(prefix="sftlab-check-") as tmp:
                try:
                    build_sft_config(training, Path(tmp) / "checkpoints", seed)
                except Exception as exc:  # as above: the library's own message, under the key it names
                    problems.append(_refused(where, "training", "trl.SFTConfig", exc, training, _training_keys()))
    return problems


def recipe_problems(config: Any, where: str = "", *, required: bool = True, dry_run: bool = True) -> list[Problem]:
    """Every problem of a recipe, in the order of its sections (see the module docstring); [] when
    it can run. `required=False` skips the required keys (a finished run's recipe read back by
    `sftlab rescore`), `dry_run=False` the library constructors."""
    if not isinstance(config, dict):
        return [Problem(where, "", f"must hold a mapping of sections, got {type(config).__name__}")]
    problems = []
    clean = set()
    for path, (allowed, fallback) in _sections().items():
        value = _at(config, path)
        if path and value is not None and not isinstance(value, dict):
            continue  # the section's own rule, checked with its parent, says it must be a mapping
        if path and "." in path and value is None:
            continue  # an optional sub-section (data.instructions) that is not there
        found = check_section(where, path, value, allowed, RULES, fallback, required_too=required)
        problems += found
        if not found:
            clean.add(path)
    problems += _across_keys(config, where)
    from .preference.recipe import section_problems  # the `preference:` section, when the recipe has one

    problems += [Problem(where, key, message)
                 for key, message in section_problems(config.get("preference"), dry_run=dry_run)]
    if dry_run:
        problems += _build_once(config, where, {s for s in ("lora", "training") if s in clean})
    return problems


def validate(config: dict, where: str = "") -> dict:
    """Check the whole recipe (see `recipe_problems`); return it unchanged, or raise one ConfigError
    listing every problem, each line naming `where` (the file), the key path and what is expected."""
    problems = recipe_problems(config, where)
    if problems:
        raise ConfigError(problems=problems)
    return config


def read_text(path: Path) -> str:
    """A text file's contents; a file that is not UTF-8 is a ConfigError naming it and the byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})") from None


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file that must hold a mapping (a recipe, a sweep file); ConfigError names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path) -> dict:
    """Read and validate a YAML recipe; `name` defaults to the file's stem."""
    path = Path(path)
    config = read_yaml_mapping(path)
    config.setdefault("name", path.stem)
    return validate(config, str(path))


def read_run_recipe(folder: str | Path, sections: tuple[str, ...], *, required: bool = True) -> dict:
    """A finished run's config.yaml, checked for what a command that reads it back uses: problems
    in `sections` (top-level keys: "model", "seed", ...) raise one ConfigError naming the file
    and key; the other sections do not matter to that command. No dry run."""
    path = Path(folder) / "config.yaml"
    config = read_yaml_mapping(path, "run recipe")
    problems = [p for p in recipe_problems(config, str(path), required=required, dry_run=False)
                if p.key.split(".")[0] in sections]
    if problems:
        raise ConfigError(problems=problems)
    return config


def read_json(path: str | Path, what: str = "", *, kind: type = dict) -> Any:
    """A JSON file that must hold a `kind` (a mapping unless told); a ConfigError names the file
    when it is missing, empty or not valid JSON. `what` says what the file is for."""
    path = Path(path)
    about = f" ({what})" if what else ""
    if not path.is_file():
        raise ConfigError(f"{path}: file missing{about}")
    raw = read_text(path)
    if not raw.strip():
        raise ConfigError(f"{path}: file is empty{about}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}){about}") from None
    if not isinstance(data, kind):
        raise ConfigError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__}, "
                          f"got {type(data).__name__}{about}")
    return data


def config_hash(config: dict) -> str:
    """A short, stable fingerprint of a config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def section(config: dict, name: str) -> dict[str, Any]:
    """A section as a dict, empty when absent."""
    return dict(config.get(name) or {})

"""A recipe's whole data pipeline: load, filter, split and report, as `datasets.Dataset`s.

`prepare_data` checks the `data:` config section against `DATA_KEYS` (defaults in
`DATA_DEFAULTS`), runs `load_conversations`, `filter_conversations` and the seeded
`train_eval_split` (eval drawn first, so `train_size` never changes it), builds the report
with `data_report`, and returns a `PreparedData` whose train and eval sets come from
`to_dataset`. `sftlab run` (sftlab.experiment) and `sftlab data` call it; the "Preprocessing,
step by step" section of chapter 3 "data" (chapters/03-data.qmd) shows the report it wrote.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from sftlab.errors import ConfigError, DataError

from .filters import FilterResult, filter_conversations, first_prompt, normalized_prompt
from .readers import VALID_SOURCES, LoadResult, load_conversations
from .report import data_report

DATA_KEYS = {
    "source": "sharegpt | chitchat | hub:ORG/NAME | path/to/file.jsonl (or jsonl:PATH)",
    "split": "split to load from a Hub dataset (offline sources have only 'train')",
    "limit": "read at most this many records, the first ones in file order (null = all)",
    "english_only": "keep only conversations that look like plain English text (looks_english)",
    "min_tokens": "drop conversations shorter than this many tokens (approximate, see filter_conversations)",
    "max_tokens": "drop conversations longer than this many tokens (approximate, see filter_conversations)",
    "min_turns": "drop conversations with fewer assistant replies",
    "max_turns": "drop conversations with more assistant replies",
    "strict_english": "with english_only, also require every user turn's letters to be >= 90% ASCII",
    "min_prompt_words": "drop conversations whose opening request has fewer words (\"cpp\", \"OK\", \"test\")",
    "drop_context_prompts": "drop conversations that open by continuing a conversation not there (\"continue\")",
    "dedupe": "keep only the first conversation with each normalised opening request (before the split)",
    "instructions": "verifiable-instruction examples replacing a share of the training conversations: "
                    "{share: 0.3, seed: 0, types: null (all), binding_limits: false, more_phrasings: false}; "
                    "see sftlab.data.instructions",
    "loss_on": "which training tokens carry the loss: replies (each assistant reply and its end-of-turn "
               "token) | all (the whole conversation, prompts and turn markers too); held-out losses always "
               "score replies",
    "train_size": "number of training conversations (null = all that remain after eval)",
    "eval_size": "number of held-out evaluation conversations, drawn first",
}

DATA_DEFAULTS = {
    "split": "train",
    "limit": None,
    "english_only": True,
    "min_tokens": None,
    "max_tokens": None,
    "min_turns": None,
    "max_turns": None,
    "strict_english": False,
    "min_prompt_words": None,
    "drop_context_prompts": False,
    "dedupe": False,
    "instructions": None,
    "loss_on": "replies",
    "train_size": None,
    "eval_size": 50,
}



@dataclass
class PreparedData:
    """Output of `prepare_data`: train/eval as `datasets.Dataset` (columns id, messages) + report."""

    train: Any
    eval: Any
    report: dict
    load: LoadResult
    filtered: FilterResult


def train_eval_split(
    convs: list[dict], *, eval_size: int, train_size: int | None = None, seed: int
) -> tuple[list[dict], list[dict]]:
    """Shuffle with `random.Random(seed)`; eval is the first `eval_size`, train the next ones.

    Deterministic for a given seed and input order, in any process. Eval is drawn first, so
    changing `train_size` never changes the eval set.
    """
    if eval_size < 0 or (train_size is not None and train_size < 0):
        raise ConfigError(f"eval_size and train_size must be >= 0, got {eval_size} and {train_size}")
    wanted = eval_size + (train_size or 0)
    if wanted > len(convs) or (train_size is None and eval_size >= len(convs)):
        raise DataError(
            f"asked for {eval_size} eval + {train_size if train_size is not None else 'the rest as'} train "
            f"conversations but only {len(convs)} are available after filtering"
        )
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    eval_idx = order[:eval_size]
    train_idx = order[eval_size:] if train_size is None else order[eval_size:eval_size + train_size]
    return [convs[i] for i in train_idx], [convs[i] for i in eval_idx]



def prepare_data(data_cfg: dict, tokenizer, seed: int, *, progress: bool = True) -> PreparedData:
    """Load, filter and split as the `data:` config section says; see `DATA_KEYS`."""
    unknown = set(data_cfg) - set(DATA_KEYS)
    if unknown:
        raise ConfigError(f"unknown data keys: {', '.join(sorted(unknown))}; allowed: {', '.join(DATA_KEYS)}")
    if not data_cfg.get("source"):
        raise ConfigError(f"data.source is required ({', '.join(VALID_SOURCES)})")
    # null means "the default" (all defaults of nullable keys are null anyway).
    cfg = {**DATA_DEFAULTS, **{k: v for k, v in data_cfg.items() if v is not None}}
    loaded = load_conversations(cfg["source"], split=cfg["split"], limit=cfg["limit"], progress=progress)
    filtered = filter_conversations(
        loaded.conversations, tokenizer=tokenizer, english_only=cfg["english_only"],
        min_tokens=cfg["min_tokens"], max_tokens=cfg["max_tokens"],
        min_turns=cfg["min_turns"], max_turns=cfg["max_turns"], strict_english=cfg["strict_english"],
        min_prompt_words=cfg["min_prompt_words"], drop_context_prompts=cfg["drop_context_prompts"],
        dedupe=cfg["dedupe"],
    )
    train, eval_ = train_eval_split(filtered.kept, eval_size=cfg["eval_size"],
                                    train_size=cfg["train_size"], seed=seed)
    mix = None
    if cfg["instructions"]:
        # Training conversations only, after the split: the held-out set stays as it was.
        train, mix = mix_training_instructions(train, cfg["instructions"], seed)
        extra, extra_report = long_reply_training_examples(filtered, cfg["instructions"], seed, tokenizer,
                                                           cfg["max_tokens"])
    # n_train counts the split's training conversations; the added ones are the mix's "extra"
    report = data_report(loaded, filtered, train, eval_, seed=seed)
    if mix is not None:
        train = train + extra  # added after the split's: more conversations to train on, not other ones
        by_id = {c["id"]: c for c in train}
        # one example per type, its last request and reply, so the book can show what the model saw
        mix["samples"] = {t: by_id[i]["messages"][-2:] for t, i in mix.get("examples", {}).items() if i in by_id}
        if extra_report is not None:  # only with the key: reports of recipes without it stay as they were
            samples = {t: by_id[i]["messages"] for t, i in extra_report["examples"].items()}
            mix["extra"] = {**extra_report, "samples": samples}
        report["instructions"] = mix
    return PreparedData(train=to_dataset(train), eval=to_dataset(eval_), report=report,
                        load=loaded, filtered=filtered)


INSTRUCTION_KEYS = {"share": "share of training conversations replaced (0 to 1)",
                    "seed": "seed for which conversations and which instruction types (default: the run's seed)",
                    "types": "instruction types to use (default: all, sftlab.data.instructions.TYPE_NAMES)",
                    "binding_limits": "length limits (at most N words or sentences) drawn below the reply's own "
                                      "length, so every such example cuts its reply (default false)",
                    "more_phrasings": "draw each instruction sentence from a second, wider set of phrasings too, "
                                      "in everyday words such as \"lowercase\" and \"bullet points\" (default false)",
                    "extra": "this many more examples added, made from conversations longer than max_tokens: the "
                             "first reply cut to a word or sentence limit plus one other instruction "
                             "(sftlab.data.long_replies; default 0)"}


def mix_training_instructions(train: list[dict], spec: dict, seed: int) -> tuple[list[dict], dict]:
    """`data.instructions` applied to the training conversations (see `sftlab.data.instructions.mix_instructions`)."""
    from .instructions import mix_instructions

    if not isinstance(spec, dict):
        raise ConfigError(f"data.instructions must be a mapping such as {{share: 0.3}}, got {spec!r}")
    unknown = set(spec) - set(INSTRUCTION_KEYS)
    if unknown:
        raise ConfigError(f"unknown data.instructions keys: {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(INSTRUCTION_KEYS)}")
    if "share" not in spec:
        raise ConfigError("data.instructions needs a share, e.g. {share: 0.3}")
    return mix_instructions(train, share=spec["share"], seed=int(spec.get("seed", seed)), types=spec.get("types"),
                            binding_limits=spec.get("binding_limits", False),
                            more_phrasings=spec.get("more_phrasings", False))


def long_reply_training_examples(filtered: FilterResult, spec: dict, seed: int, tokenizer,
                                 max_tokens: int | None) -> tuple[list[dict], dict | None]:
    """`data.instructions.extra` examples from the conversations rejected only as too long (see
    `sftlab.data.long_replies`), never opening with a kept conversation's request; ([], None) without the key."""
    from .long_replies import long_reply_examples

    n = spec.get("extra")
    if n is None:
        return [], None
    if n and max_tokens is None:
        raise ConfigError("data.instructions.extra needs data.max_tokens: its examples come from the "
                          "conversations longer than that, cut down to fit it")
    kept_openings = {normalized_prompt(first_prompt(c["messages"])) for c in filtered.kept}
    return long_reply_examples(filtered.too_long, n=n, seed=int(spec.get("seed", seed)), max_tokens=max_tokens,
                               tokenizer=tokenizer, exclude_prompts=kept_openings, types=spec.get("types"),
                               more_phrasings=spec.get("more_phrasings", False))


def to_dataset(convs: list[dict]):
    """A `datasets.Dataset` with columns id (str) and messages, what TRL's SFTTrainer takes."""
    from datasets import Dataset, Features, List, Value

    features = Features({"id": Value("string"),
                         "messages": List({"role": Value("string"), "content": Value("string")})})
    return Dataset.from_dict({"id": [c["id"] for c in convs], "messages": [c["messages"] for c in convs]},
                             features=features)

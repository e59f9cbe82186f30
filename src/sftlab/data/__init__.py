"""Conversational data for SFT: load ShareGPT, chit-chat, Hub or JSONL sources into TRL's
`{"messages": [...]}` format, validate and filter them with every drop counted, split, and report.

Every record read ends up either kept or counted under a stable snake_case reason, so the
report can always answer "where did my data go?". One module per job, in pipeline order:
`messages` (what a valid conversation is, the skip reasons), `readers` (the sources and
`LoadResult`), `filters` (language, turns, token length), `report` (`data_report`,
`format_report`, used by chapter 3 "data") and `prepare` (the seeded split and
`prepare_data`, used by `sftlab run`). Everything public is re-exported here, so
`from sftlab.data import prepare_data` works without knowing which module holds it.
"""

from __future__ import annotations

from .filters import (
    CHARS_PER_TOKEN_CAP,
    conversation_text,
    filter_conversations,
    FilterResult,
    first_prompt,
    looks_english,
    n_turns,
    normalized_prompt,
    prompt_problem,
    token_lengths,
)
from .messages import (
    N_EXAMPLES,
    ROLES,
    SHAREGPT_ROLES,
    merge_speaker_turns,
    normalize_messages,
    sharegpt_to_messages,
    validate_messages,
)
from .prepare import (
    DATA_DEFAULTS,
    DATA_KEYS,
    PreparedData,
    prepare_data,
    to_dataset,
    train_eval_split,
)
from .readers import (
    INSTALL_OFFLINE,
    OFFLINE_SOURCES,
    VALID_SOURCES,
    JsonArrayReader,
    LoadResult,
    load_conversations,
)
from .report import data_report, format_report

__all__ = [
    "CHARS_PER_TOKEN_CAP",
    "DATA_DEFAULTS",
    "DATA_KEYS",
    "INSTALL_OFFLINE",
    "N_EXAMPLES",
    "OFFLINE_SOURCES",
    "ROLES",
    "SHAREGPT_ROLES",
    "VALID_SOURCES",
    "FilterResult",
    "JsonArrayReader",
    "LoadResult",
    "PreparedData",
    "conversation_text",
    "data_report",
    "filter_conversations",
    "first_prompt",
    "format_report",
    "load_conversations",
    "looks_english",
    "merge_speaker_turns",
    "n_turns",
    "normalize_messages",
    "normalized_prompt",
    "prepare_data",
    "prompt_problem",
    "sharegpt_to_messages",
    "to_dataset",
    "token_lengths",
    "train_eval_split",
    "validate_messages",
]

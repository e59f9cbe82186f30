"""The plain-text passages that measure forgetting: prose only, deterministic, every token scored."""

from __future__ import annotations

import pytest

from sftlab.errors import ConfigError
from sftlab.plaintext import plain_text_windows, prose


def test_prose_keeps_paragraphs_and_drops_code_grammar_and_headings():
    page = ('The "if" statement\n******************\n\nThe "if" statement is used for\nconditional execution:\n\n'
            '   if_stmt ::= "if" expression ":" suite\n\nIt selects exactly one of the suites.')
    assert prose(page) == 'The "if" statement is used for conditional execution:\n\nIt selects exactly one of the suites.'


def test_windows_are_fixed_length_targets_and_the_same_every_time(tiny_tokenizer):
    windows = plain_text_windows(tiny_tokenizer, 6, window=32)
    assert len(windows) == 6 and len({tuple(w["input_ids"]) for w in windows}) == 6
    bos = tiny_tokenizer.bos_token_id
    for w in windows:
        assert w["input_ids"][0] == bos and len(w["input_ids"]) == 33
        assert w["assistant_masks"] == [0] + [1] * 32  # every prose token is scored, not the BOS
    assert plain_text_windows(tiny_tokenizer, 6, window=32) == windows


def test_asking_for_more_passages_than_exist_is_an_error(tiny_tokenizer):
    with pytest.raises(ConfigError, match="evaluation.plain_text asks for 1000000 passages"):
        plain_text_windows(tiny_tokenizer, 1_000_000)
    with pytest.raises(ConfigError, match="positive"):
        plain_text_windows(tiny_tokenizer, 0)

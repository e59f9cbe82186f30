"""Tests for sftlab.data.messages: validation reasons, normalization, ShareGPT roles, chit-chat merging."""

from __future__ import annotations

import pytest

from sftlab import data


def msg(role, content):
    return {"role": role, "content": content}


# ---------------------------------------------------------------------------
# validate_messages


def test_valid_conversation_passes(three_turn_conversation):
    assert data.validate_messages(three_turn_conversation) is None


U, A, S = msg("user", "Hi"), msg("assistant", "Hello"), msg("system", "Be nice.")


@pytest.mark.parametrize(
    "messages, reason",
    [
        ("not a list", "bad_type"),
        ([U, "not a dict"], "bad_type"),
        ([U, {"role": "assistant", "content": 3}], "bad_type"),
        ([], "no_messages"),
        ([{"content": "Hi"}, A], "missing_key:role"),
        ([{"role": "user"}, A], "missing_key:content"),
        ([U, msg("tool", "x")], "unknown_role:tool"),
        ([U, msg("assistant", " \n ")], "empty_content"),
        ([S, S, U, A], "system_not_first"),
        ([U, S, A], "system_not_first"),
        ([S, U], "no_assistant_turn"),
        ([U], "no_assistant_turn"),
        ([A, U, A], "first_not_user"),
        ([S, A], "first_not_user"),
        ([U, U, A], "roles_not_alternating"),
        ([U, A, A], "roles_not_alternating"),
        ([U, A, U], "last_not_assistant"),
    ],
)
def test_validation_reasons(messages, reason):
    assert data.validate_messages(messages) == reason


def test_normalize_strips_drops_extra_keys_and_trims_trailing_user():
    messages = [{"role": "user", "content": "  Hi \n", "name": "bob"}, A, msg("user", "more?")]
    out, trimmed = data.normalize_messages(messages)
    assert trimmed
    assert out == [msg("user", "Hi"), A]
    assert data.validate_messages(out) is None


def test_lone_user_turn_is_not_trimmed_into_nothing():
    out, trimmed = data.normalize_messages([U])
    assert not trimmed and data.validate_messages(out) == "no_assistant_turn"


def test_sharegpt_roles_map_and_unknown_role_is_a_reason():
    turns = [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "bard", "value": "a"}]
    assert [m["role"] for m in data.sharegpt_to_messages(turns)] == ["system", "user", "assistant"]
    assert data.sharegpt_to_messages([{"from": "tool", "value": "x"}]) == "unknown_role:tool"
    assert data.sharegpt_to_messages([{"from": "human"}]) == "missing_key:value"


# ---------------------------------------------------------------------------
# chit-chat merging


def test_merge_speaker_turns_merges_consecutive_messages():
    utterances = [("a", "Hello"), ("a", "How are you?"), ("b", "fine"), ("b", "you?"), ("a", "good")]
    assert data.merge_speaker_turns(utterances) == [
        msg("user", "Hello\nHow are you?"),
        msg("assistant", "fine\nyou?"),
        msg("user", "good"),
    ]


def test_merge_first_speaker_is_user_even_if_second_speaks_most():
    out = data.merge_speaker_turns([("x", "hi"), ("y", "a"), ("y", "b")])
    assert [m["role"] for m in out] == ["user", "assistant"]


def test_merge_single_speaker_and_third_speaker():
    single = data.merge_speaker_turns([("a", "hi"), ("a", "anyone?")])
    assert data.validate_messages(single) == "no_assistant_turn"
    assert data.merge_speaker_turns([("a", "1"), ("b", "2"), ("c", "3")]) == "too_many_speakers"

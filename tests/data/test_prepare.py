"""Tests for sftlab.data.prepare: the seeded train/eval split and the whole pipeline."""

from __future__ import annotations

import json

import pytest

from sftlab import data
from sftlab.errors import ConfigError, DataError


def msg(role, content):
    return {"role": role, "content": content}


def conv(i, turns=1, text="What is the capital of France? The capital of France is Paris."):
    messages = []
    for _ in range(turns):
        messages += [msg("user", f"Question {i}: {text}"), msg("assistant", f"Answer {i}: {text}")]
    return {"id": str(i), "messages": messages}


# ---------------------------------------------------------------------------
# Split


def test_split_is_deterministic_and_disjoint():
    convs = [conv(i) for i in range(100)]
    train, eval_ = data.train_eval_split(convs, eval_size=10, train_size=30, seed=7)
    again = data.train_eval_split(convs, eval_size=10, train_size=30, seed=7)
    assert (train, eval_) == again
    assert len(train) == 30 and len(eval_) == 10
    assert not {c["id"] for c in train} & {c["id"] for c in eval_}
    other = data.train_eval_split(convs, eval_size=10, train_size=30, seed=8)
    assert other != (train, eval_)


def test_eval_set_does_not_depend_on_train_size():
    convs = [conv(i) for i in range(50)]
    _, eval_small = data.train_eval_split(convs, eval_size=5, train_size=10, seed=0)
    train_all, eval_all = data.train_eval_split(convs, eval_size=5, seed=0)
    assert eval_small == eval_all and len(train_all) == 45


def test_split_too_small_names_both_numbers():
    with pytest.raises(DataError, match=r"30.*\b12\b"):
        data.train_eval_split([conv(i) for i in range(12)], eval_size=30, seed=0)
    with pytest.raises(DataError, match=r"5 eval \+ 10 train.*\b12\b"):
        data.train_eval_split([conv(i) for i in range(12)], eval_size=5, train_size=10, seed=0)


# ---------------------------------------------------------------------------
# The whole pipeline


def test_prepare_data_end_to_end(tmp_path, tiny_tokenizer):
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(json.dumps(conv(i, turns=1 + i % 3)) + "\n" for i in range(40)) + "{oops\n")
    cfg = {"source": str(path), "max_turns": 2, "max_tokens": 10_000, "train_size": 10, "eval_size": 5}
    out = data.prepare_data(cfg, tiny_tokenizer, seed=3, progress=False)
    assert len(out.train) == 10 and len(out.eval) == 5
    assert out.train.column_names == ["id", "messages"]
    assert out.train[0]["messages"][0]["role"] == "user"
    assert out.report["skipped"] == {"invalid_json": 1}
    assert out.report["rejected"] == {"too_many_turns": 13}
    again = data.prepare_data(cfg, tiny_tokenizer, seed=3, progress=False)
    assert again.train["id"] == out.train["id"] and again.eval["id"] == out.eval["id"]


def test_prepare_data_rejects_unknown_keys():
    assert set(data.DATA_KEYS) >= {"source", "split", "limit", "eval_size", "train_size"}
    with pytest.raises(ConfigError, match="max_len"):
        data.prepare_data({"source": "chitchat", "max_len": 3}, None, seed=0)


def _long_conv(i):
    reply = (f"Paris is the capital of France number {i}. It lies on the river Seine. It is known for its museums. "
             "Many people visit it every year. The city has a long history.")
    return {"id": f"c{i}", "messages": [msg("user", f"Tell me about Paris, please, version {i}."),
                                        msg("assistant", reply)]}


def test_instruction_examples_replace_a_share_of_training_only(tmp_path):
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(json.dumps(_long_conv(i)) + "\n" for i in range(40)))
    cfg = {"source": str(path), "english_only": False, "train_size": 20, "eval_size": 10,
           "instructions": {"share": 0.5, "seed": 1}}
    out = data.prepare_data(cfg, None, seed=3, progress=False)
    plain = data.prepare_data({k: v for k, v in cfg.items() if k != "instructions"}, None, seed=3, progress=False)
    assert out.eval["id"] == plain.eval["id"] and out.eval["messages"] == plain.eval["messages"]
    assert len(out.train) == 20 and sum(i.endswith("+if") for i in out.train["id"]) == 10
    mix = out.report["instructions"]
    assert mix["n_replaced"] == 10 and sum(mix["per_type"].values()) == 10
    assert all(len(m) == 2 for m in mix["samples"].values())  # each type's example: request and reply
    assert "binding_limits" not in mix and "more_phrasings" not in mix  # without the keys: the report it always had

    binding = data.prepare_data({**cfg, "instructions": {"share": 0.5, "seed": 1, "binding_limits": True}},
                                None, seed=3, progress=False)
    assert binding.report["instructions"]["binding_limits"] is True
    assert binding.eval["messages"] == plain.eval["messages"]
    wide = data.prepare_data({**cfg, "instructions": {"share": 0.5, "seed": 1, "more_phrasings": True}},
                             None, seed=3, progress=False)
    assert wide.report["instructions"]["more_phrasings"] is True and wide.eval["messages"] == plain.eval["messages"]


@pytest.mark.parametrize("spec, message", [
    ({"shares": 0.3}, "unknown data.instructions keys: shares"),
    ({"seed": 1}, "needs a share"),
    (0.3, "must be a mapping"),
    ({"share": 0.3, "binding_limits": "yes"}, "binding_limits must be true or false"),
    ({"share": 0.3, "more_phrasings": 1}, "more_phrasings must be true or false"),
])
def test_bad_instruction_settings_are_named(tmp_path, spec, message):
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(json.dumps(_long_conv(i)) + "\n" for i in range(12)))
    with pytest.raises(ConfigError, match=message):
        data.prepare_data({"source": str(path), "english_only": False, "eval_size": 2, "instructions": spec},
                          None, seed=0, progress=False)

"""Property-based tests (hypothesis): messy data never crashes the pipeline or slips through
silently, no message text can pose as the chat template's control tokens, a recipe mangled by
hand is valid or a ConfigError naming its keys, and a run folder with broken files is named
by `sftlab chat` and `sftlab rescore`, never a traceback."""

from __future__ import annotations

import copy
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftlab.chat import control_token_ids, encode_conversation, prepare_tokenizer
from sftlab.data import load_conversations, validate_messages

# ---------------------------------------------------------------------------- data

ROLE_NAMES = st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "", "USER"])
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "   ", "\n\t", "\x00\x01\x1b[31m", "<end_of_turn>", "\ud800", "é" * 5000]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT)


def _message():
    good = st.fixed_dictionaries({"role": ROLE_NAMES, "content": TEXT})
    broken = st.one_of(
        st.fixed_dictionaries({"role": ROLE_NAMES}),  # missing content
        st.fixed_dictionaries({"content": TEXT}),  # missing role
        st.fixed_dictionaries({"role": SCALARS, "content": SCALARS}),  # wrong types
        st.fixed_dictionaries({"from": ROLE_NAMES, "value": SCALARS}),  # ShareGPT-shaped
        SCALARS,
        st.lists(SCALARS, max_size=2),
    )
    return st.one_of(good, good, broken)


def _record():
    messages = st.lists(_message(), max_size=7)
    return st.one_of(
        st.fixed_dictionaries({"id": st.text(max_size=5), "messages": messages}),
        st.fixed_dictionaries({"conversations": messages}),
        st.fixed_dictionaries({"messages": SCALARS}),
        st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
        SCALARS,
        st.lists(SCALARS, max_size=3),
    )


def _line(record, mangle):
    text = json.dumps(record)  # lone surrogates become \ud800 escapes, as in real scraped files
    data = text.encode("utf-8")
    if mangle == "truncate":
        return data[: max(1, len(data) // 2)]
    if mangle == "latin1":
        return data + b" \xff\xfe"
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_record(), st.sampled_from(["ok", "ok", "ok", "truncate", "latin1"])), max_size=12))
def test_every_record_is_kept_or_counted_with_a_reason(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("prop") / "data.jsonl"
    path.write_bytes(b"\n".join(_line(r, m) for r, m in rows) + b"\n")
    result = load_conversations(str(path), progress=False)
    # No crash, and the counts add up to the input: one record per non-blank line.
    assert result.n_read == len(rows)
    assert result.n_read == len(result.conversations) + sum(result.skipped.values())
    assert all(reason and count > 0 for reason, count in result.skipped.items())
    # Whatever was kept is a valid conversation that the template and tokenizer can take.
    for conv in result.conversations:
        assert validate_messages(conv["messages"]) is None
        for m in conv["messages"]:
            m["content"].encode("utf-8")  # no lone surrogates left


# ---------------------------------------------------------------------------- template

INJECT = st.sampled_from(
    ["<end_of_turn>", "<start_of_turn>", "<start_of_turn>model\n", "<bos>", "<eos>", "<pad>", "<unk>",
     "<mask>", "<|im_start|>", "\n", "model", "user", "\ue000", "\ue0010\ue001", "<", ">", "_turn>"]
)
CONTENT = st.lists(st.one_of(INJECT, st.text(max_size=12)), max_size=6).map("".join)


def _conversation():
    exchange = st.tuples(CONTENT, CONTENT)
    return st.tuples(st.one_of(st.none(), CONTENT), st.lists(exchange, min_size=1, max_size=3))


def _messages(system, exchanges):
    msgs = [] if system is None else [{"role": "system", "content": system}]
    for user, reply in exchanges:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return msgs


def _skeleton(system, exchanges):
    return _messages(None if system is None else "s", [("u", "a") for _ in exchanges])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_conversation())
def test_message_text_never_becomes_control_tokens_or_changes_roles(tiny_tokenizer, conv):
    tok = copy.deepcopy(tiny_tokenizer) if not hasattr(tiny_tokenizer, "_sftlab_prepared") else tiny_tokenizer
    if not hasattr(tok, "_sftlab_prepared"):
        prepare_tokenizer(tok, "gemma")
    system, exchanges = conv
    controls = control_token_ids(tok)
    enc = encode_conversation(tok, _messages(system, exchanges))
    ref = encode_conversation(tok, _skeleton(system, exchanges))
    # The control tokens are exactly those of the same conversation with harmless text.
    assert [i for i in enc["input_ids"] if i in controls] == [i for i in ref["input_ids"] if i in controls]
    # The learned tokens spell each reply (as the template trims it) and its <end_of_turn>, nothing else.
    learned = tok.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert learned == "".join(reply.strip() + "<end_of_turn>" for _, reply in exchanges)


# ---------------------------------------------------------------------------- broken files


def test_corrupt_json_array_is_a_clear_error_naming_the_file(tmp_path):
    import io

    import pytest

    from sftlab.data import JsonArrayReader
    from sftlab.errors import DataError

    good = json.dumps([{"id": "a", "conversations": []}]).encode()
    bad = io.BytesIO(good[:-1] + b", {\"id\": \"b\xff\xfe\"}]")
    bad.name = "ShareGPT.json"
    with pytest.raises(DataError, match=r"ShareGPT.json: not valid UTF-8 near byte"):
        list(JsonArrayReader(bad))
    not_array = io.BytesIO(b'{"id": 1}')
    not_array.name = "x.json"
    with pytest.raises(DataError, match="x.json: not a JSON array"):
        list(JsonArrayReader(not_array))


def test_truncated_json_array_yields_complete_records_and_says_where_it_broke():
    import io

    from sftlab.data import JsonArrayReader

    data = json.dumps([{"id": str(i), "conversations": []} for i in range(5)]).encode()
    reader = JsonArrayReader(io.BytesIO(data[:-20]), total=len(data) - 20)
    records = list(reader)
    assert [r["id"] for r in records] == ["0", "1", "2", "3"]
    assert reader.broken_at is not None and '"id": "4"' in reader.partial


# ---------------------------------------------------------------------------- recipes

def _committed_recipes() -> dict[str, dict]:
    """Every committed recipe (configs/*.yaml) and every variant of the sweep, as `sftlab run` reads them."""
    from pathlib import Path

    from sftlab.config import read_yaml_mapping
    from sftlab.sweep import load_sweep

    out = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        recipe = read_yaml_mapping(path)
        if "variants" in recipe:  # a sweep file: its variants are recipes
            out.update({f"{path.name}: {name}": r for name, r in load_sweep(path)["recipes"].items()})
        else:
            out[path.name] = {"name": path.stem, **recipe}
    return out


RECIPES = _committed_recipes()
NEW_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                       st.sampled_from(["", "x", "5e-4", "no", "auto", "<end_of_turn>", "sharegpt"]),
                       st.lists(st.integers(-1, 5), max_size=2), st.just({}), st.just({"share": "x"}))


def _paths(tree: dict, prefix=()) -> list[tuple]:
    out = []
    for key, value in tree.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


def _misspelt(key: str, i: int, how: str) -> str:
    i %= max(len(key), 1)
    if how == "drop" and len(key) > 1:
        return key[:i] + key[i + 1:]
    if how == "swap" and len(key) > 1:
        j = min(i + 1, len(key) - 1)
        return key[:i] + key[j] + key[i] + key[j + 1:] if i != j else key + "s"
    return key[:i] + "x" + key[i:]


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(sorted(RECIPES)), st.data())
def test_a_mutated_recipe_is_valid_or_a_config_error_naming_keys(name, data):
    """Random deletions, type changes and misspellings of committed recipes: a ConfigError whose
    every problem names the file and a key, or a recipe that validates; never another exception."""
    from sftlab.config import validate
    from sftlab.errors import ConfigError

    recipe = copy.deepcopy(RECIPES[name])
    changed = []
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(recipe)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="key")
        parent = recipe
        for part in path[:-1]:
            parent = parent[part]
        how = data.draw(st.sampled_from(["delete", "retype", "drop", "swap", "insert"]), label="how")
        if how == "delete":
            del parent[path[-1]]
        elif how == "retype":
            parent[path[-1]] = data.draw(NEW_VALUES, label="value")
        else:
            new = _misspelt(str(path[-1]), data.draw(st.integers(0, 40), label="at"), how)
            parent[new] = parent.pop(path[-1])
            path = (*path[:-1], new)
        changed.append((how, ".".join(map(str, path))))
    before = copy.deepcopy(recipe)
    try:
        validate(recipe, "recipe.yaml")
    except ConfigError as exc:
        assert exc.problems, str(exc)
        assert all(p.where == "recipe.yaml" and p.key and p.message for p in exc.problems), str(exc)
        assert all(str(p) in str(exc) for p in exc.problems)
    assert recipe == before  # the check never changes the recipe
    for how, path in changed:
        if how == "delete" and path in ("model.base", "data.source"):
            with pytest.raises(ConfigError, match=f"{re.escape(path)}: required, missing"):
                validate(recipe, "recipe.yaml")


# ---------------------------------------------------------------------------- run folders

BREAKS = st.sampled_from(["missing", "empty", "truncate", "garbage", "json"])
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["adapter/adapter_config.json", "metrics.json", "samples.jsonl",
                                           "run.json", "config.yaml", "heldout_losses.json"]),
                          BREAKS, st.floats(0, 1), JSON_VALUES), min_size=1, max_size=2))
def test_chat_and_rescore_on_a_broken_run_folder_name_the_file(monkeypatch, breaks):
    """`sftlab chat` and `sftlab rescore` on a run folder with missing, empty or corrupt files: a
    ConfigError naming a file of the folder, or (files still readable) the command goes on; no
    other exception, and chat loads no model before the folder is checked."""
    import tempfile
    from pathlib import Path

    from run_folders import write_run_folder

    import sftlab.rescore
    import sftlab.sources
    from sftlab.errors import ConfigError
    from sftlab.rescore import rescore
    from sftlab.talk import chat

    class Loaded(Exception):
        pass

    def load_model(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(sftlab.sources, "load_model", load_model)
    monkeypatch.setattr(sftlab.rescore, "git_commit", lambda: "0" * 40)  # no git process per example
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_run_folder(Path(tmp) / "run")
        for name, how, at, value in breaks:
            path = folder / name
            if not path.is_file():
                continue  # broken twice: already missing
            raw = path.read_bytes()
            if how == "missing":
                path.unlink()
            elif how == "empty":
                path.write_bytes(b"")
            elif how == "truncate":
                path.write_bytes(raw[: int(len(raw) * at)])
            elif how == "garbage":
                path.write_bytes(raw[: int(len(raw) * at)] + b"\xff\x00{]\n" + raw[int(len(raw) * at):])
            else:
                path.write_text(json.dumps(value) + ("\n" if name.endswith(".jsonl") else ""))
        for command in (lambda: chat(folder, prompt="hi"), lambda: rescore(folder, progress=False)):
            try:
                command()
            except ConfigError as exc:
                assert str(folder) in str(exc), str(exc)
            except Loaded:
                pass  # chat: every file it reads was fine, the model would load now

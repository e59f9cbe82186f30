"""`sftlab chat` and the adapter's model card, on a finished tiny run."""

from __future__ import annotations

import io
import json

import pytest

from sftlab.errors import ConfigError
from sftlab.experiment import run_experiment


@pytest.fixture()
def tiny_results(tiny_recipe, tmp_path):
    return run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)


def test_one_reply_is_streamed_and_stops(tiny_results):
    from sftlab.talk import chat

    out = io.StringIO()
    assert chat(tiny_results, prompt="Hello there", max_new_tokens=5, stdout=out) == 0
    assert "<end_of_turn>" not in out.getvalue() and out.getvalue().endswith("\n")


def test_the_conversation_carries_over_until_reset(tiny_results, monkeypatch):
    from sftlab import talk

    seen = []
    real = talk.reply

    def spy(model, tokenizer, messages, **kw):
        seen.append([m["content"] for m in messages])
        return real(model, tokenizer, messages, **kw)

    monkeypatch.setattr(talk, "reply", spy)
    out = io.StringIO()
    talk.chat(tiny_results, max_new_tokens=3, stdin=io.StringIO("first\nsecond\n/reset\nthird\n/exit\nnever\n"),
              stdout=out)
    assert [s[0] for s in seen] == ["first", "first", "third"]  # second turn sees the first; reset forgets it
    assert len(seen[1]) == 3 and seen[1][2] == "second"
    assert "(new conversation)" in out.getvalue() and all("never" not in s for s in seen)


def test_missing_and_mismatched_adapters_are_named(tiny_results, tmp_path):
    from safetensors.torch import load_file, save_file

    from sftlab.talk import load_sft_model

    with pytest.raises(ConfigError, match="not a finished run folder"):
        load_sft_model(tmp_path / "nowhere")
    weights = tiny_results / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if "lora_A" in k)
    tensors[name] = tensors[name][:, :-1].contiguous()  # one input feature short: another base model's shape
    save_file(tensors, str(weights))
    with pytest.raises(ConfigError, match="does not fit the run's base model"):
        load_sft_model(tiny_results)
    (tiny_results / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(ConfigError, match="no trained adapter"):
        load_sft_model(tiny_results)


def test_the_run_writes_a_filled_model_card_without_machine_paths(tiny_results):
    card = (tiny_results / "adapter" / "README.md").read_text()
    config = json.loads((tiny_results / "adapter" / "adapter_config.json").read_text())
    assert "[More Information Needed]" not in card and "/tmp/" not in card and "/root/" not in card
    assert not config["base_model_name_or_path"].startswith("/")
    assert "merge_and_unload()" in card and "held-out loss" in card


@pytest.mark.slow
def test_the_committed_adapter_card_names_the_hub_model():
    from pathlib import Path

    adapter = Path(__file__).resolve().parents[1] / "results" / "default" / "adapter"
    card = (adapter / "README.md").read_text()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert "[More Information Needed]" not in card and "/root/" not in card and "/home/" not in card
    assert config["base_model_name_or_path"] == "google/gemma-3-270m" and "base_model: google/gemma-3-270m" in card


def test_the_model_card_says_how_many_instruction_examples_were_added(tiny_results):
    from sftlab.modelcard import model_card

    assert "of them added" not in model_card(tiny_results)
    report = json.loads((tiny_results / "data_report.json").read_text())
    report["instructions"] = {"share": 0.5, "extra": {"n_added": 7}}
    (tiny_results / "data_report.json").write_text(json.dumps(report))
    assert "(7 of them added: instruction examples cut from conversations too long to keep)" in model_card(tiny_results)


# `sftlab chat` on a folder with a missing, empty or corrupt file: named before any model loads.
@pytest.mark.parametrize("name, content, message", [
    ("adapter/adapter_config.json", None, "has no trained adapter (adapter/adapter_config.json)"),
    ("adapter/adapter_config.json", "", "adapter_config.json: file is empty"),
    ("adapter/adapter_config.json", '{"peft_type": "LO', "adapter_config.json: not valid JSON"),
    ("adapter/adapter_config.json", '"LORA"', "adapter_config.json: expected a JSON object, got str"),
    ("adapter/adapter_config.json", '{"r": 4}', "adapter_config.json: peft_type: missing"),
    ("adapter/adapter_model.safetensors", None, "no adapter weights"),
    ("adapter/adapter_model.safetensors", "", "adapter_model.safetensors: file is empty"),
    ("config.yaml", "", "config.yaml: model.base: required, missing"),
    ("config.yaml", "model: {base: x, template: gemmma}\n", "config.yaml: model.template: expected one of"),
    ("config.yaml", "model: [unclosed\n", "config.yaml is not valid YAML"),
])
def test_chat_names_a_broken_file_before_loading_a_model(tmp_path, monkeypatch, capsys, name, content, message):
    from run_folders import write_run_folder

    import sftlab.sources
    from sftlab.cli import main
    from sftlab.talk import chat

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the run folder was checked")

    monkeypatch.setattr(sftlab.sources, "load_model", refuse)
    folder = write_run_folder(tmp_path / "run")
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        chat(folder, prompt="hi", stdout=io.StringIO())
    assert main(["chat", str(folder), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

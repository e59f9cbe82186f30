"""benchmarks/bench.py: its pure helpers, the train.py fast paths it measures, and a --smoke run.

The fast-path tests (padding-free batches, length-grouped batches) check `sftlab.train`
against its unchanged padded path: the benchmark's speed figures mean something only
if every variant trains on the same loss.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sftlab.chat import prepare_model
from sftlab.train import build_lora_config, build_sft_config, encode_dataset, labelled_position_loss

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("sftlab_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# -----------------------------------------------------------------------------
# Pure helpers


def _step(seconds, assistant=10, tokens=20, positions=25):
    return {"seconds": seconds, "assistant_tokens": assistant, "tokens": tokens, "positions": positions}


def test_summary_leaves_out_warmup_steps():
    steps = [_step(50.0), _step(99.0), _step(2.0), _step(4.0), _step(3.0)]
    s = bench.summarize_steps(steps, warmup=2)
    assert s["timed_steps"] == 3 and s["seconds"] == 9.0 and s["median_step_s"] == 3.0
    assert s["assistant_tokens"] == 30 and s["assistant_tokens_per_s"] == pytest.approx(30 / 9, abs=1e-3)
    assert s["padding_fraction"] == pytest.approx(1 - 60 / 75, abs=1e-3)


def test_ratios_divide_by_the_baseline_and_skip_failed_variants():
    variants = {
        "trl-default": {"assistant_tokens_per_s": 40.0, "median_step_s": 40.0, "peak_memory_bytes": 5e9},
        "sftlab": {"assistant_tokens_per_s": 80.0, "median_step_s": 20.0, "peak_memory_bytes": 4e9},
        "broken": {"error": "boom"},
    }
    ratios = bench.training_ratios(variants)
    assert ratios == {"sftlab": {"assistant_tokens_per_s": 2.0, "median_step_s": 0.5, "peak_memory_bytes": 0.8}}
    assert bench.ratio(1.0, 0) is None and bench.ratio(None, 2.0) is None
    assert bench.training_ratios({"trl-default": {"error": "x"}, "sftlab": variants["sftlab"]}) == {}


def test_loss_agreement_holds_bf16_weights_to_their_own_tolerance():
    base = {"first_batch_loss": 2.0}
    close = {"trl-default": base, "sftlab": {"first_batch_loss": 2.00001},
             "sftlab-bf16-weights": {"first_batch_loss": 2.03}}
    diffs, outside = bench.loss_agreement(close)
    assert outside == [] and max(diffs) < 1e-4  # the bf16 variant is not among the fp32 differences
    far = {**close, "sftlab-bf16-weights": {"first_batch_loss": 2.3}, "sftlab-gc": {"first_batch_loss": 2.01}}
    assert bench.loss_agreement(far)[1] == ["sftlab-bf16-weights", "sftlab-gc"]


def test_top_operators_rank_by_self_time_with_shares():
    from types import SimpleNamespace as E

    events = [E(key="aten::mm", self_cpu_time_total=600_000, count=40),
              E(key="aten::add", self_cpu_time_total=100_000, count=90),
              E(key="aten::bmm", self_cpu_time_total=300_000, count=12)]
    result = bench.top_operators(events, limit=2)
    assert result["total_self_s"] == 1.0
    assert [r["operator"] for r in result["top"]] == ["aten::mm", "aten::bmm"]
    assert result["top"][0] == {"operator": "aten::mm", "self_s": 0.6, "share": 0.6, "calls": 40}


def test_table_aligns_numbers_right_and_shows_missing_values():
    table = bench.format_table(["variant", "tok/s"], [["trl-default", 42.0], ["sftlab", None]])
    lines = table.splitlines()
    assert lines[0] == "| variant     | tok/s |"
    assert lines[2] == "| trl-default |  42.0 |" and lines[3] == "| sftlab      |     - |"
    assert len({len(line) for line in lines}) == 1


def _variant(loss=2.5, tps=40.0, step_s=4.0):
    steps = [_step(10.0), _step(step_s), _step(step_s)]
    return {"about": "x", "settings": {"bf16": False, "gradient_checkpointing": True, "padding_free": False,
                                       "train_sampling_strategy": "sequential", "trainable_token_indices": None},
            "load_s": 1.0, "first_batch_loss": loss, "steps": steps, **bench.summarize_steps(steps, 1),
            "assistant_tokens_per_s": tps, "peak_memory_bytes": 5e9, "peak_memory_kind": "ru_maxrss"}


def _result(**training_overrides):
    settings = bench.make_settings(bench.parse_args(["--smoke"]), {"model": {"base": "m"}, "data": {"source": "d"}})
    variants = {"trl-default": _variant(), "sftlab": _variant(tps=80.0, step_s=2.0),
                "sftlab-no-tt-padding-free": {"error": "x\nboom"}}
    return {
        "schema_version": 1, "created": "now", "device": "cpu", "settings": settings,
        "hardware": {"processor": "cpu"}, "versions": {}, "data": {},
        "training": {"baseline": "trl-default", "variants": variants, "ratios": bench.training_ratios(variants),
                     "first_batch_loss_max_abs_diff": 0.0, **training_overrides},
        "generation": {"prompts": 2, "max_new_tokens": 4, "speedup": 3.0, "identical": 2,
                       "runs": [{"batch_size": 1, "generated_tokens": 8, "seconds": 3.0, "tokens_per_s": 2.67},
                                {"batch_size": 8, "generated_tokens": 8, "seconds": 1.0, "tokens_per_s": 8.0}]},
        "loading": {"cached": {"seconds": 2.0, "note": "n"}, "first": {"seconds": None, "note": "skipped"}},
        "notes": ["a note"],
    }


def test_result_schema_is_checked():
    result = _result()
    bench.validate_result(result)  # complete: no error
    del result["training"]["variants"]["sftlab"]["peak_memory_bytes"]
    del result["loading"]
    with pytest.raises(ValueError, match="loading.*training.variants.sftlab.peak_memory_bytes"):
        bench.validate_result(result)


def test_report_shows_ratios_failures_and_loss_agreement():
    report = bench.format_report(_result())
    assert "x2.00" in report and "x0.50" in report  # sftlab: twice the tokens/s, half the step time
    assert "FAILED: boom" in report
    assert "agree" in report and "DISAGREE" not in report
    assert "DISAGREE" in bench.format_report(_result(first_batch_loss_max_abs_diff=0.3))


def test_settings_smoke_sizes_and_variant_choice():
    s = bench.make_settings(bench.parse_args(["--smoke", "--variants", "sftlab,sftlab"]), {})
    assert (s["steps"], s["conversations"], s["prompts"], s["first_load"]) == (2, 8, 4, False)
    assert s["variants"] == ["trl-default", "sftlab"]  # the baseline always runs; repeats once
    assert bench.make_settings(bench.parse_args(["--steps", "3"]), {})["steps"] == 3
    with pytest.raises(SystemExit, match="unknown variants"):
        bench.make_settings(bench.parse_args(["--variants", "nope"]), {})


def test_generation_batch_follows_the_recipe_unless_given():
    recipe = {"evaluation": {"batch_size": 16}}
    assert bench.make_settings(bench.parse_args([]), recipe)["generation_batch_size"] == 16
    assert bench.make_settings(bench.parse_args([]), {})["generation_batch_size"] == 8
    args = bench.parse_args(["--generation-batch-size", "4"])
    assert bench.make_settings(args, recipe)["generation_batch_size"] == 4


# -----------------------------------------------------------------------------
# train.py fast paths, each against the padded path


CONVS = [
    {"id": "a", "messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}]},
    {"id": "b", "messages": [{"role": "user", "content": "What is the capital of France?"},
                             {"role": "assistant", "content": "The capital of France is Paris."}]},
    {"id": "c", "messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Write a short poem about the sea."},
                             {"role": "assistant", "content": "The sea is wide and blue."},
                             {"role": "user", "content": "1 2 3"}, {"role": "assistant", "content": "4 5 6"}]},
]


def _examples(tok, convs):
    ds, _ = encode_dataset(convs, tok, max_length=None, progress=False)
    return [{"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]}
            for ids, mask in zip(ds["input_ids"], ds["assistant_masks"])]


def _collate(tok, examples, padding_free):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=padding_free)(examples)


def test_padding_free_loss_equals_padded_loss(chat_setup):
    from peft import get_peft_model

    model, tok, fmt = chat_setup
    examples = _examples(tok, CONVS)
    padded, free = _collate(tok, examples, False), _collate(tok, examples, True)
    assert free["input_ids"].shape[0] == 1 and "attention_mask" not in free  # one row, sequences back to back
    lora = build_lora_config({"r": 4, "lora_alpha": 8, "target_modules": "all-linear",
                              "trainable_token_indices": ["<end_of_turn>"]}, tok, fmt)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        reference = peft_model(**padded).loss  # transformers' own loss on the padded batch
        assert abs(labelled_position_loss(peft_model, padded) - reference) < 1e-5
        assert abs(labelled_position_loss(peft_model, free) - reference) < 1e-5


def test_padding_free_sequences_do_not_attend_to_each_other(chat_setup):
    model, tok, _ = chat_setup
    first, second = _examples(tok, CONVS[:2])
    other_first = _examples(tok, [CONVS[2]])[0]  # different tokens, different length
    only_second = [{**first, "labels": [-100] * len(first["labels"])}, second]
    changed = [{**other_first, "labels": [-100] * len(other_first["labels"])}, second]
    batch, batch_changed = _collate(tok, only_second, True), _collate(tok, changed, True)
    with torch.no_grad():
        alone = labelled_position_loss(model, _collate(tok, [second], True))
        loss = labelled_position_loss(model, batch)
        loss_changed = labelled_position_loss(model, batch_changed)
        # The check can fail: with a KV cache, transformers lets every token see the earlier sequences.
        inner = model.model
        ids, positions = batch["input_ids"], batch["position_ids"]
        leaky = inner(input_ids=ids, position_ids=positions, use_cache=True).last_hidden_state
        sealed = inner(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    assert abs(loss - alone) < 1e-5 and abs(loss_changed - alone) < 1e-5
    assert (leaky - sealed)[0, len(first["input_ids"]):].abs().max() > 1e-3


def test_padding_free_config_passes_trl_checks_and_trains_like_padded(chat_setup, tmp_path, tiny_tokenizer):
    """TRL refuses padding_free with a max_length: build_sft_config drops it (encode_dataset enforced it)."""
    from tiny_models import build_tiny_model

    from sftlab.train import sft_trainer_class

    _, tok, fmt = chat_setup
    dataset, _ = encode_dataset(CONVS * 2, tok, max_length=200, progress=False)
    losses = {}
    for name, extra in [("padded", {}), ("padding_free", {"padding_free": True})]:
        args = build_sft_config({"max_steps": 3, "per_device_train_batch_size": 3, "learning_rate": 1e-2, "bf16": False,
                                 "save_strategy": "no", "max_length": 200, "train_sampling_strategy": "sequential",
                                 "disable_tqdm": True, **extra}, tmp_path / name, seed=0)
        model = build_tiny_model(tok)
        prepare_model(model, tok, fmt)
        lora = build_lora_config({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"},
                                 tok, fmt)
        trainer = sft_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tok,
                                   peft_config=lora)
        trainer.train()
        losses[name] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    config = build_sft_config({"padding_free": True, "max_length": 200, "bf16": False}, tmp_path, seed=0)
    assert config.max_length is None
    assert len(losses["padded"]) == 3
    assert losses["padding_free"] == pytest.approx(losses["padded"], abs=1e-5)


def test_length_grouped_batches_need_no_length_column(chat_setup, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from sftlab.train import sft_trainer_class

    model, tok, fmt = chat_setup
    convs = [{"id": str(i), "messages": [{"role": "user", "content": "Hello there " * (1 + i % 5)},
                                         {"role": "assistant", "content": "Hi. " * (1 + i % 7)}]} for i in range(24)]
    dataset, _ = encode_dataset(convs, tok, max_length=None, progress=False)
    assert "length" not in dataset.column_names
    args = build_sft_config({"train_sampling_strategy": "group_by_length", "per_device_train_batch_size": 4,
                             "bf16": False, "max_steps": 1, "save_strategy": "no"}, tmp_path, seed=0)
    lora = build_lora_config({"r": 4, "target_modules": "all-linear"}, tok, fmt)
    trainer = sft_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=lora)
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    batches = list(trainer.get_train_dataloader())
    lengths = [int(b["attention_mask"].sum(1).max()) for b in batches]
    assert sum(b["input_ids"].shape[0] for b in batches) == len(dataset)  # every conversation, once
    assert lengths[0] == max(len(x) for x in dataset["input_ids"])  # the longest batch comes first
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    chunks = [[len(x) for x in dataset["input_ids"][i:i + 4]] for i in range(0, len(dataset), 4)]
    sequential = sum(len(c) * max(c) - sum(c) for c in chunks)  # padding of the same batches in file order
    assert padding < sequential
    trainer.train()


# -----------------------------------------------------------------------------
# The whole script, tiny


def _write_conversations(path, n=12):
    topics = ["the sea", "France", "a fox", "numbers", "poems", "the weather"]
    with path.open("w") as f:
        for i in range(n):
            t = topics[i % len(topics)]
            reply = f"Here is what I know about {t}: it is a fine topic, and you can read more about it. " * (1 + i % 3)
            messages = [{"role": "user", "content": f"What can you tell me about {t}? Please answer ({i})."},
                        {"role": "assistant", "content": reply}]
            f.write(json.dumps({"id": f"c{i}", "messages": messages}) + "\n")


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path, tiny_model_dir):
    data = tmp_path / "convs.jsonl"
    _write_conversations(data)
    out = tmp_path / "bench" / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--model", str(tiny_model_dir), "--data", str(data),
                           "--out", str(out), "--profile"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    bench.validate_result(result)
    variants = result["training"]["variants"]
    assert list(variants) == list(bench.VARIANTS)
    assert all(v["timed_steps"] == 2 and v["assistant_tokens_per_s"] > 0 for v in variants.values())
    # --profile: one more step per variant, profiled and left out of the timed ones
    ran = result["settings"]["warmup_steps"] + result["settings"]["steps"]
    assert all(v["profile"]["step"] == ran + 1 and v["profile"]["top"] and len(v["steps"]) == ran
               for v in variants.values())
    assert f"Profile of sftlab, step {ran + 1}" in proc.stdout
    fp32 = [v["first_batch_loss"] for n, v in variants.items() if "loss_tolerance" not in bench.VARIANTS[n]]
    assert max(fp32) - min(fp32) < 1e-5  # TRL's tokenization and sftlab's give the same tokens and labels
    bf16 = variants["sftlab-bf16-weights"]
    assert bf16["settings"]["weights_dtype"] == "bfloat16"
    assert abs(bf16["first_batch_loss"] - fp32[0]) < bench.VARIANTS["sftlab-bf16-weights"]["loss_tolerance"]
    assert result["training"]["first_batch_loss_outside_tolerance"] == []
    assert variants["sftlab-no-tt-padding-free"]["padding_fraction"] == 0.0
    assert variants["trl-default"]["settings"]["trainable_token_indices"] is None
    assert variants["sftlab"]["settings"]["trainable_token_indices"]
    assert variants["sftlab-gc-every-2"]["settings"]["checkpoint_every_n_layers"] == 2
    assert variants["sftlab-gc"]["settings"]["checkpoint_every_n_layers"] == 1
    # `sftlab` is the recipe as configured; each undoing variant changes one setting and only it
    recipe = yaml.safe_load(bench.DEFAULT_CONFIG.read_text())
    configured = variants["sftlab"]["settings"]
    assert configured["loss_chunk_size"] == recipe["training"]["loss_chunk_size"] == 256
    assert configured["gradient_accumulation_steps"] == recipe["training"]["gradient_accumulation_steps"] == 2
    assert configured["lora_dropout"] == recipe["lora"]["lora_dropout"] == variants["trl-default"]["settings"]["lora_dropout"]
    assert variants["sftlab-unfused"]["settings"]["loss_chunk_size"] is None
    assert variants["sftlab-dropout"]["settings"]["lora_dropout"] == 0.05
    before = variants["sftlab-2026-12-01"]["settings"]
    assert (before["loss_chunk_size"], before["gradient_accumulation_steps"], before["lora_dropout"]) == (None, 1, 0.05)
    for name in ("sftlab-unfused", "sftlab-dropout"):
        assert variants[name]["settings"]["gradient_accumulation_steps"] == 2
    # gradient accumulation: the same conversations per optimizer step, counted once per step
    one_pass = variants["sftlab-one-pass"]
    assert one_pass["settings"]["gradient_accumulation_steps"] == variants["trl-default"]["settings"]["gradient_accumulation_steps"] == 1
    assert len(configured_steps := variants["sftlab"]["steps"]) == len(one_pass["steps"]) == ran
    assert sum(s["assistant_tokens"] for s in configured_steps) == sum(s["assistant_tokens"] for s in one_pass["steps"])
    assert result["generation"]["prompts"] == 4 and len(result["generation"]["runs"]) == 2
    assert result["loading"]["cached"]["seconds"] > 0
    assert "trl-default" in proc.stdout and "Generation" in proc.stdout


@pytest.mark.slow
def test_generation_benchmark_times_both_ways_on_a_finished_run(tmp_path, tiny_recipe):
    from sftlab.experiment import run_experiment

    run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)
    out = tmp_path / "generation.json"
    script = BENCH.parent / "generation.py"
    proc = subprocess.run([sys.executable, str(script), "--results", str(tmp_path / "results" / "tiny"),
                           "--prompts", "5", "--max-new-tokens", "12", "--chunks", "none,4,1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [r["chunk_tokens"] for r in runs] == [None, 4, 1] and runs[0]["speedup"] == 1.0
    assert all(r["identical"] == 5 and r["seconds"] > 0 for r in runs)  # the tiny model's replies, whichever way
    assert result["hardware"]["cpu_kind"] and result["prompts"] == 5
    assert "| chunk_tokens |" in proc.stdout and "identical replies" in proc.stdout

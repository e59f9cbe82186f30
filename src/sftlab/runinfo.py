"""Where a result came from: the git commit, package versions and hardware that run.json records.

`sftlab run` reads all three once at the end of a run, `sftlab rescore` the commit for its
run.json entry, and benchmarks/bench.py the versions and hardware for its own result files,
so every number under results/ can be traced to the code, libraries and machine behind it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except OSError:
        return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = ["sftlab", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "evaluate", "nltk"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def _cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or platform.machine()


# CPU features that decide training speed here: bf16 matrix units (AVX-512 BF16, AMX) make
# bf16 autocast pay off; with AVX2 only, bf16 is emulated and slower than fp32.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_features() -> list[str]:
    """Which of `CPU_FEATURES` this CPU has (from /proc/cpuinfo's flags; [] where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FEATURES if f in flags]
    except OSError:
        pass  # not Linux: the model name still says which CPU it was
    return []


def cpu_kind(features: list[str] | None = None) -> str:
    """"AVX-512 BF16" or "AMX" where the CPU has bf16 units, else "AVX2" (or "unknown")."""
    features = cpu_features() if features is None else features
    if "amx_bf16" in features:
        return "AMX"
    if "avx512_bf16" in features:
        return "AVX-512 BF16"
    return "AVX2" if "avx2" in features else "unknown"


def hardware() -> dict:
    import torch

    features = cpu_features()
    hw = {"platform": platform.platform(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
          "cpu_features": features, "cpu_kind": cpu_kind(features)}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    else:
        hw["gpu"] = None
    hw["torch_threads"] = torch.get_num_threads()
    return hw

"""LoRA by the numbers: the parameter and memory calculator (chapter 2), one trained update
read from the adapter file (chapter 2), and where the update landed, layer by layer and
module by module (chapters 5 and 7). References: LoRA (Hu et al. 2021).
"""

from __future__ import annotations

import json
from pathlib import Path

from .results import results_dir



TARGET_SETS = {
    "attention q,v": ("q_proj", "v_proj"),
    "attention q,k,v,o": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all linear (attention + MLP)": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


BYTES_PER_TRAINED_PARAM = 16  # fp32 weight 4 + gradient 4 + Adam's two moments 4 + 4


BYTES_PER_FROZEN_PARAM = 4  # fp32 weight only: no gradient, no optimizer state
BYTES_PER_FROZEN_BF16 = 2  # the frozen weight stored in bf16 (cast once), as a bf16-weights recipe would


def target_linears(model, target_modules) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every Linear whose last name part is a target.

    PEFT matches a list of `target_modules` the same way (by name suffix); the output layer
    `lm_head` is never a target here. Works before and after `get_peft_model` (a LoRA layer
    keeps the name and the shape of the Linear it wraps).
    """
    import torch

    targets = set(target_modules)
    return [
        (name, mod.in_features, mod.out_features)
        for name, mod in model.named_modules()
        if (isinstance(mod, torch.nn.Linear) or hasattr(mod, "base_layer"))
        and name.rsplit(".", 1)[-1] in targets
    ]


def lora_parameter_count(model, r: int, target_modules) -> int:
    """Trainable LoRA parameters: r * (in + out) per targeted Linear (A is r x in, B is out x r).

    Gemma-3 270M, r=16, q_proj (640 -> 1024): 16 * (640 + 1024) = 26,624 per layer.
    """
    return sum(r * (i + o) for _, i, o in target_linears(model, target_modules))


def lora_parameter_table(model, ranks=(4, 8, 16, 32, 64), target_sets: dict | None = None,
                         highlight: tuple[int, str] | None = None):
    """Trainable parameters and training memory for each LoRA rank and target set, plus full fine-tuning.

    Columns: target_set, rank, trainable, share_pct (of the model's parameters),
    adapter_mb (the fp32 adapter file), trained_state_mb (16 bytes per trained parameter:
    weight, gradient, two Adam moments), train_memory_gb (frozen fp32 weights at 4 bytes +
    trained state; activations excluded, they depend on batch and length), train_memory_bf16_frozen_gb
    (the same with the frozen weights stored in bf16, 2 bytes each).
    The last row is full fine-tuning: every parameter trained (its rank is empty).
    `highlight=(rank, target_set)` adds a `note` column marking that row ("◀ this project").
    """
    import pandas as pd

    target_sets = target_sets or TARGET_SETS
    total = sum(p.numel() for p in model.parameters())
    rows = []
    for set_name, modules in target_sets.items():
        for r in ranks:
            n = lora_parameter_count(model, r, modules)
            rows.append({"target_set": set_name, "rank": r, "trainable": n})
    rows.append({"target_set": "full fine-tuning", "rank": None, "trainable": total})
    frame = pd.DataFrame(rows)
    frame["rank"] = pd.Series([row["rank"] for row in rows], dtype=object)  # ints, None for full fine-tuning
    frame["share_pct"] = 100 * frame["trainable"] / total
    frame["adapter_mb"] = frame["trainable"] * 4 / 1e6
    frame["trained_state_mb"] = frame["trainable"] * BYTES_PER_TRAINED_PARAM / 1e6
    frozen = (total - frame["trainable"]).clip(lower=0)
    frame["train_memory_gb"] = (frozen * BYTES_PER_FROZEN_PARAM + frame["trainable"] * BYTES_PER_TRAINED_PARAM) / 1e9
    frame["train_memory_bf16_frozen_gb"] = (frozen * BYTES_PER_FROZEN_BF16 + frame["trainable"] * BYTES_PER_TRAINED_PARAM) / 1e9
    if highlight is not None:
        frame["note"] = ["◀ this project" if i == setting_index(frame, highlight) else "" for i in frame.index]
    return frame


def trainable_breakdown(peft_model, lora_config):
    """Where the trainable parameters of a PEFT-wrapped model are, counted from the layer shapes:
    the LoRA matrices (r x (in + out) per wrapped projection) and the trainable token rows
    (hidden_size each), against the count PEFT itself reports. Raises ValueError when they differ,
    so a chapter cannot print a count that PEFT does not train."""
    import pandas as pd

    config = peft_model.get_base_model().config
    wrapped = target_linears(peft_model, lora_config.target_modules)
    n_lora = lora_parameter_count(peft_model, lora_config.r, lora_config.target_modules)
    rows = list(lora_config.trainable_token_indices or [])
    n_rows = len(rows) * config.hidden_size
    trainable, _ = peft_model.get_nb_trainable_parameters()
    if trainable != n_lora + n_rows:
        raise ValueError(f"PEFT trains {trainable:,} parameters, the layer shapes give {n_lora + n_rows:,}")
    per_layer = len(wrapped) // config.num_hidden_layers
    return pd.DataFrame([
        {"part": f"LoRA A and B: {len(wrapped)} projections ({per_layer} per layer x {config.num_hidden_layers} layers), "
                 f"r = {lora_config.r}, scale alpha/r = {lora_config.lora_alpha / lora_config.r:g}", "parameters": n_lora},
        {"part": f"trainable token rows: {len(rows)} x hidden size {config.hidden_size}", "parameters": n_rows},
        {"part": "together, as PEFT counts them", "parameters": trainable},
    ])


def setting_index(table, setting: tuple[int, str]):
    """Index of the row of `lora_parameter_table` for `setting=(rank, target_set)` (KeyError if absent)."""
    r, name = setting
    hits = [i for i, (rank, s) in enumerate(zip(table["rank"].tolist(), table["target_set"])) if rank == r and s == name]
    if not hits:
        raise KeyError(f"no row for rank {r} and target set {name!r}")
    return table.index[hits[0]]


def target_set_name(target_modules, target_sets: dict | None = None) -> str | None:
    """The name of the set in `target_sets` holding exactly `target_modules` (None if none does)."""
    wanted = set(target_modules or ())
    for name, modules in (target_sets or TARGET_SETS).items():
        if set(modules) == wanted:
            return name
    return None


def adapter_update(results: str | Path | None, layer: int, module: str) -> dict:
    """One trained LoRA update read from the run's adapter file: A, B, the scale alpha/r, and
    delta_w = scale * B @ A (the matrix merging adds to the frozen weight).

    E.g. layer 0 q_proj of Gemma-3 270M at r=16: A is 16 x 640, B is 1024 x 16, delta_w is
    1024 x 640 but has rank at most 16.
    """
    import torch
    from safetensors import safe_open

    path = Path(results) if results is not None else results_dir()
    cfg = json.loads((path / "adapter" / "adapter_config.json").read_text())
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    # rsLoRA scales by alpha / sqrt(r) instead of alpha / r.
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    with safe_open(str(path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = [k for k in f.keys() if f"layers.{layer}." in k and f".{module}.lora_" in k]
        a = f.get_tensor(next(k for k in keys if ".lora_A." in k)).float()
        b = f.get_tensor(next(k for k in keys if ".lora_B." in k)).float()
    delta = scale * (b @ a)
    return {"A": a, "B": b, "r": r, "alpha": alpha, "scale": scale, "delta_w": delta,
            "rank": int(torch.linalg.matrix_rank(delta))}


def lora_update_summary(update: dict):
    """A small table about one LoRA update: shapes, parameter counts, numerical rank."""
    import pandas as pd

    a, b, d = update["A"], update["B"], update["delta_w"]
    rows = [
        ("A (down-projection), trained", "x".join(map(str, a.shape)), a.numel()),
        ("B (up-projection), trained", "x".join(map(str, b.shape)), b.numel()),
        ("delta_w = (alpha/r) B A, merged into W", "x".join(map(str, d.shape)), d.numel()),
    ]
    frame = pd.DataFrame(rows, columns=["matrix", "shape", "entries"])
    frame["rank"] = [min(a.shape), min(b.shape), update["rank"]]
    return frame


MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_norms_frame(results: str | Path | None = None):
    """`lora_norms.jsonl` as a DataFrame (name, layer, module, norm, relative_norm) plus `kind`
    (attention or MLP). relative_norm = ||scale * B @ A|| / ||W||: the update's size next to
    the weight it changes."""
    import pandas as pd

    path = Path(results) if results is not None else results_dir()
    frame = pd.read_json(path / "lora_norms.jsonl", lines=True)
    frame["kind"] = frame["module"].map(lambda m: "MLP" if m in ("gate_proj", "up_proj", "down_proj") else "attention")
    return frame

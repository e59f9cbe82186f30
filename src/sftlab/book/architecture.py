"""The base model's shape and where its parameters are, read from the loaded model (chapter 4),
and how far fine-tuning moved one embedding row (chapter 7)."""

from __future__ import annotations



def architecture_facts(model):
    """The model's shape, read from its config and weights (not typed in). Columns: fact, value."""
    import pandas as pd

    c = model.config
    layer_types = list(getattr(c, "layer_types", None) or [])
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == emb.data_ptr()
    facts = [
        ("architecture", type(model).__name__),
        ("transformer layers", c.num_hidden_layers),
        ("hidden size", c.hidden_size),
        ("MLP intermediate size", c.intermediate_size),
        ("attention heads (query)", c.num_attention_heads),
        ("key/value heads (grouped-query attention)", c.num_key_value_heads),
        ("head dimension", getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)),
        ("vocabulary size", c.vocab_size),
        ("input and output embeddings tied", bool(tied)),
    ]
    if layer_types:
        facts += [
            ("sliding-window (local) attention layers", sum(t == "sliding_attention" for t in layer_types)),
            ("full (global) attention layers", sum(t == "full_attention" for t in layer_types)),
            ("sliding window (tokens)", getattr(c, "sliding_window", None)),
        ]
    facts += [
        ("max positions", c.max_position_embeddings),
        ("parameters", sum(p.numel() for p in model.parameters())),
    ]
    return pd.DataFrame(facts, columns=["fact", "value"]).astype({"value": object})


def parameter_breakdown(model):
    """Parameters by part: the (tied) embedding, attention and MLP projections, norms.

    `model.parameters()` lists a tied weight once, so the parts add up to the model's size.
    Columns: part, parameters, share (of all parameters).
    """
    import pandas as pd

    parts = {"token embedding (tied with output layer)": 0, "attention projections": 0,
             "MLP projections": 0, "norms and other": 0}
    for name, p in model.named_parameters():
        if "embed_tokens" in name or name.startswith("lm_head"):
            parts["token embedding (tied with output layer)"] += p.numel()
        elif ".self_attn." in name and name.endswith("proj.weight"):
            parts["attention projections"] += p.numel()
        elif ".mlp." in name:
            parts["MLP projections"] += p.numel()
        else:
            parts["norms and other"] += p.numel()
    total = sum(parts.values())
    return pd.DataFrame(
        [{"part": k, "parameters": v, "share": v / total} for k, v in parts.items()]
    )


def embedding_row_change(base, tuned, token_id: int) -> dict:
    """How far fine-tuning moved one token's embedding row: absolute and relative L2 change."""
    a = base.get_input_embeddings().weight[token_id].detach().float()
    b = tuned.get_input_embeddings().weight[token_id].detach().float()
    change = float((b - a).norm())
    return {"token_id": token_id, "change": change, "relative_change": change / float(a.norm())}

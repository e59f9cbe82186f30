"""Evaluation-time generation: one `generate` call per batch against chunks that drop finished rows.

`sftlab.evaluate.generate_replies` writes a batch `chunk_tokens` new tokens at a time and removes
the rows that have stopped between chunks (with their KV cache), because `model.generate` keeps
every row until the last one stops. This script times both ways on the same model and prompts,
side by side, and counts identical replies. The gain depends on the model: a trained model that
stops early gains most; the base model, which rarely stops, gains nothing and pays a little.

    .venv/bin/python benchmarks/generation.py                      # the default run's trained model
    .venv/bin/python benchmarks/generation.py --results results/X --prompts 30 --out /tmp/g.json

Writes results/bench/generation.json (machine, versions, settings, both runs, ratios) and prints
a table. Name the CPU kind with any figure you quote (the JSON's hardware.cpu_kind).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, _relative, format_table, hardware, log, ratio, versions  # noqa: E402  (the sibling script)

DEFAULT_OUT = ROOT / "results" / "bench" / "generation.json"


def measure(model, tokenizer, prompts: list[list[int]], *, stop_ids, max_new_tokens: int, batch_size: int,
            chunks: list[int | None]) -> list[dict]:
    """Each `chunk_tokens` setting's wall time and replies on the same prompts (first one = baseline)."""
    from sftlab.evaluate import generate_replies

    generate_replies(model, tokenizer, prompts[:1], stop_ids=stop_ids, max_new_tokens=2, progress=False)  # warm-up
    runs = []
    for chunk in chunks:
        log(f"generating {len(prompts)} replies, batch {batch_size}, chunk_tokens={chunk}")
        start = time.perf_counter()
        out = generate_replies(model, tokenizer, prompts, stop_ids=stop_ids, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, chunk_tokens=chunk, progress=False)
        runs.append({"chunk_tokens": chunk, "seconds": round(time.perf_counter() - start, 2), "replies": out})
    base = runs[0]
    for run in runs:
        run["speedup"] = ratio(base["seconds"], run["seconds"])
        run["identical"] = sum(a["text"] == b["text"] for a, b in zip(base["replies"], run["replies"]))
        run["reply_tokens"] = sum(r["n_tokens"] for r in run["replies"])
        run["stopped"] = sum(r["stopped"] for r in run["replies"])
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(ROOT / "results" / "default"), help="a finished run folder")
    p.add_argument("--model", choices=("sft", "base"), default="sft", help="the run's trained model or its base")
    p.add_argument("--prompts", type=int, default=60, help="IFEval-style prompts to answer")
    p.add_argument("--max-new-tokens", type=int, help="default: the run's evaluation.max_new_tokens")
    p.add_argument("--batch-size", type=int, help="default: the run's evaluation.batch_size")
    p.add_argument("--chunks", default="none,32", help="chunk_tokens settings, the first the baseline")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    import yaml

    from sftlab.evaluate import chat_prompt_ids
    from sftlab.ifeval import load_prompts
    from sftlab.talk import load_base_model, load_sft_model, stop_token_ids

    config = yaml.safe_load((Path(args.results) / "config.yaml").read_text())
    ev = config.get("evaluation") or {}
    max_new = args.max_new_tokens or int(ev.get("max_new_tokens", 200))
    batch = args.batch_size or int(ev.get("batch_size", 8))
    chunks = [None if c.strip().lower() == "none" else int(c) for c in args.chunks.split(",")]
    log(f"loading the {args.model} model of {args.results}")
    model, tokenizer = (load_sft_model if args.model == "sft" else load_base_model)(args.results)
    records = load_prompts()[: args.prompts]
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in records]
    runs = measure(model, tokenizer, prompts, stop_ids=stop_token_ids(tokenizer), max_new_tokens=max_new,
                   batch_size=batch, chunks=chunks)
    hw = hardware()
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/generation.py"] + (argv or sys.argv[1:])),
        "results": _relative(args.results),
        "model": args.model, "prompts": len(prompts), "max_new_tokens": max_new, "batch_size": batch,
        "hardware": hw, "versions": versions(),
        "runs": [{k: v for k, v in r.items() if k != "replies"} for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Generation on {hw.get('processor')} ({hw.get('cpu_kind')}), {args.model} model of {result['results']}: "
          f"{len(prompts)} prompts, batch {batch}, {max_new} new tokens at most")
    print(format_table(["chunk_tokens", "seconds", "speed-up", "reply tokens", "stopped", "identical replies"],
                       [[str(r["chunk_tokens"]), r["seconds"], r["speedup"], r["reply_tokens"], r["stopped"],
                         f"{r['identical']}/{len(prompts)}"] for r in runs]))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

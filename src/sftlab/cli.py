"""The `sftlab` command.

  sftlab data --config FILE   print the data report of a recipe
  sftlab run FILE             train and evaluate; write results/NAME/
  sftlab rescore DIR [--model] recompute a run's metrics from its samples.jsonl (--model: the loss too)
  sftlab compare DIR_A DIR_B  does run B's every metric lie inside run A's 95% interval?
  sftlab evaluate-extra DIR [--sets qa ood decoding judge official_ifeval plain_text]
                              add response-accuracy sets to a finished run (sftlab.extra)
  sftlab card DIR             write the adapter's model card (adapter/README.md)
  sftlab chat DIR [--prompt TEXT]
                              talk to the run's trained model (streamed; /reset, /exit)
  sftlab notebooks export|execute|badges
                              the chapters as Colab notebooks (see sftlab.notebooks)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SftlabError


def _cmd_data(args) -> int:
    from .config import load_config, section
    from .data import format_report, prepare_data
    from .sources import load_tokenizer

    config = load_config(args.config)
    tokenizer = load_tokenizer(section(config, "model")["base"])
    prepared = prepare_data(section(config, "data"), tokenizer, seed=config.get("seed", 0))
    if args.json:
        print(json.dumps(prepared.report, indent=2, default=str))
    else:
        print(format_report(prepared.report))
    return 0


def _cmd_run(args) -> int:
    from .experiment import run_experiment

    out = run_experiment(args.config, results_root=args.results, progress=not args.quiet, resume=args.resume,
                         fresh=args.fresh)
    if out is not None:  # None: a process other than the main one under `accelerate launch`
        print(out)
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import run_sweep

    print(run_sweep(args.sweep, progress=not args.quiet, only=args.only or None))
    return 0


def _cmd_rescore(args) -> int:
    from .rescore import rescore

    entry = rescore(args.results_dir, with_model=args.model, progress=not args.quiet)
    changed = entry["changed"]
    print(f"{args.results_dir}: {len(changed)} metric value(s) changed")
    for key, (before, after) in sorted(changed.items()):
        print(f"  {key}: {before} -> {after}")
    return 0


def _cmd_evaluate_extra(args) -> int:
    from .extra import evaluate_extra

    decoding = {k: v for k, v in (("heldout", args.decoding_heldout), ("ifeval", args.decoding_ifeval)) if v is not None}
    entries = evaluate_extra(args.results_dir, args.sets, progress=not args.quiet, force=args.force,
                             judge=args.judge, decoding=decoding or None)
    for name, entry in entries.items():
        print(f"{args.results_dir}: {name} done ({entry['generate_s']:.0f} s of generation, {entry['cpu_kind']})")
    return 0


def _cmd_chat(args) -> int:
    from .talk import chat

    return chat(args.results_dir, prompt=args.prompt, max_new_tokens=args.max_new_tokens)


def _cmd_inspect(args) -> int:
    from .inspect import inspect_run

    inspect_run(args.results_dir, progress=not args.quiet)
    return 0


def _cmd_book_variables(args) -> int:
    from .book.variables import VARIABLES_FILE, write_variables

    changed = write_variables(check=args.check)
    if args.check:
        if changed:
            print(f"{VARIABLES_FILE} differs from what results/ gives: run `sftlab book variables` and commit it",
                  file=sys.stderr)
            return 1
        print(f"{VARIABLES_FILE} matches results/")
        return 0
    print(f"{VARIABLES_FILE} {'written' if changed else 'unchanged'}")
    return 0


def _cmd_card(args) -> int:
    from .modelcard import write_model_card

    print(write_model_card(args.results_dir))
    return 0


def _cmd_compare(args) -> int:
    from .compare import compare_metrics, format_comparison, read_metrics

    result = compare_metrics(read_metrics(args.a), read_metrics(args.b))
    print(format_comparison(result, str(args.a), str(args.b)))
    return 0


def _cmd_book_pages(args) -> int:
    from .book.checks import output_faults, page_parts, pages_from_parts
    from .notebooks import book_root, chapter_files
    from .notebooks.quarto import execute_like_quarto

    root = book_root()
    known = chapter_files(root)
    unknown = sorted(set(args.chapters) - {c.stem for c in known})
    if unknown:
        print(f"no such chapter(s): {', '.join(unknown)}; chapters: {', '.join(c.stem for c in known)}", file=sys.stderr)
        return 2
    chapters = [c for c in known if not args.chapters or c.stem in args.chapters]
    main = appendix = 0.0
    for chapter in chapters:
        executed = []
        execute_like_quarto(chapter, root, executed=executed)
        parts = page_parts(executed[0])
        pages = pages_from_parts(parts)
        in_appendix = chapter.stem.startswith("appendix")
        main, appendix = main + (0 if in_appendix else pages), appendix + (pages if in_appendix else 0)
        faults = output_faults(executed[0])
        print(f"{chapter.stem:24s} {pages:5.1f} pages  {parts}" + (f"  faults: {faults}" if faults else ""), flush=True)
    print(f"main text {main:.1f} pages, appendix {appendix:.1f} (chapters only: add the title, contents and references)")
    return 0


def _cmd_notebooks_export(args) -> int:
    from .notebooks import NOTEBOOKS_DIR, book_root, chapter_files, export_notebooks

    root = book_root()
    changed = export_notebooks(root, args.out, check=args.check)
    out = args.out or root / NOTEBOOKS_DIR
    if args.check:
        if changed:
            print(
                f"{len(changed)} notebook(s) in {out} differ from the chapters: "
                + ", ".join(p.name for p in changed)
                + "\nrun `sftlab notebooks export` and commit notebooks/",
                file=sys.stderr,
            )
            return 1
        print(f"notebooks in {out} match the chapters")
        return 0
    n = len(chapter_files(root))
    print(f"exported {n} chapter(s) to {out} ({len(changed)} changed)")
    return 0


def _cmd_notebooks_execute(args) -> int:
    from .notebooks import NOTEBOOKS_DIR, book_root, execute_notebooks

    root = book_root()
    folder = Path(args.dir) if args.dir else root / NOTEBOOKS_DIR
    if args.names:
        paths = [folder / (name if name.endswith(".ipynb") else f"{name}.ipynb") for name in args.names]
        absent = [p.name for p in paths if not p.is_file()]
        if absent:
            print(f"no such notebook(s) in {folder}: {', '.join(absent)}", file=sys.stderr)
            return 2
    else:
        paths = sorted(folder.glob("*.ipynb"), key=lambda p: (p.stem != "index", p.name))
    if not paths:
        print(f"no notebooks in {folder}; run `sftlab notebooks export` first", file=sys.stderr)
        return 2
    results = execute_notebooks(paths, root, timeout=args.timeout)
    print("\nwall time per notebook:")
    for name, result in results.items():
        print(f"  {name:<32} {'FAILED' if isinstance(result, Exception) else f'{result:7.1f} s'}")
    failed = [name for name, result in results.items() if isinstance(result, Exception)]
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_notebooks_badges(args) -> int:
    from .notebooks import CHAPTERS_DIR, badge_block, book_root, chapter_files, missing_badges

    root = book_root()
    missing = missing_badges(root)
    if missing:
        print("chapter(s) without their Colab badge; put these lines near the top:", file=sys.stderr)
        for stem in missing:
            print(f"\n{CHAPTERS_DIR}/{stem}.qmd:\n{badge_block(stem, root)}", file=sys.stderr)
        return 1
    print(f"all {len(chapter_files(root))} chapter(s) carry their Colab badge")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="load, validate, filter and split a recipe's data; print the report")
    data.add_argument("--config", required=True, help="a run recipe, e.g. configs/default.yaml")
    data.add_argument("--json", action="store_true", help="print the report as JSON")
    data.set_defaults(func=_cmd_data)
    run = sub.add_parser("run", help="train LoRA and evaluate every system; write results/NAME/")
    run.add_argument("config", help="a run recipe, e.g. configs/default.yaml")
    run.add_argument("--results", default="results", help="folder that receives NAME/ (default: results)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run of the same config from its last checkpoint")
    again.add_argument("--fresh", action="store_true",
                       help="discard an interrupted run of the same config and start over")
    run.set_defaults(func=_cmd_run)
    sweep = sub.add_parser("sweep", help="an ablation study: train and score each variant of a control recipe, "
                                         "then summarise each one's paired differences from the control")
    sweep.add_argument("sweep", help="a sweep file, e.g. configs/ablations.yaml")
    sweep.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants (finished ones "
                                                                    "still enter the summary)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(func=_cmd_sweep)
    rescore = sub.add_parser("rescore", help="recompute a finished run's reply metrics from samples.jsonl "
                                             "(after a metric changed); the held-out loss is kept")
    rescore.add_argument("results_dir", help="a finished run folder, e.g. results/default")
    rescore.add_argument("--model", action="store_true",
                         help="also recompute the held-out loss (split into content and end-of-turn tokens) with "
                              "the run's base model and adapter: a minute or two, no generation")
    rescore.add_argument("--quiet", action="store_true", help="no progress bars")
    rescore.set_defaults(func=_cmd_rescore)
    extra = sub.add_parser("evaluate-extra", help="add response-accuracy sets to a finished run: questions with "
                           "checkable answers, untrained instruction types, decoding settings, a judge, official IFEval, forgetting")
    extra.add_argument("results_dir")
    extra.add_argument("--sets", nargs="+", metavar="SET", help="qa, ood, decoding, judge, official_ifeval, plain_text "
                       "(default: the recipe's evaluation.extra_sets, qa and ood)")
    extra.add_argument("--force", action="store_true", help="redo sets the run already has")
    extra.add_argument("--judge", metavar="SPEC", help="judge model (a local folder or a Hub id); "
                       "overrides evaluation.judge")
    extra.add_argument("--decoding-heldout", type=int, metavar="N", help="held-out prompts in the decoding subset")
    extra.add_argument("--decoding-ifeval", type=int, metavar="N", help="IFEval-style prompts in the decoding subset")
    extra.add_argument("--quiet", action="store_true", help="no progress bars")
    extra.set_defaults(func=_cmd_evaluate_extra)
    talk = sub.add_parser("chat", help="talk to a run's trained model (base + adapter, merged); /reset, /exit")
    talk.add_argument("results_dir", help="a finished run folder, e.g. results/default")
    talk.add_argument("--prompt", help="answer this one message and exit")
    talk.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    talk.set_defaults(func=_cmd_chat)
    book = sub.add_parser("book", help="the book's own files: `book variables` writes _variables.yml, the numbers "
                                       "the chapters print, from results/")
    book_sub = book.add_subparsers(dest="book_command", required=True)
    book_vars = book_sub.add_parser("variables", help="write _variables.yml from results/ (--check: only compare)")
    book_vars.add_argument("--check", action="store_true", help="exit 1 if the file differs, writing nothing")
    book_vars.set_defaults(func=_cmd_book_variables)
    book_pages = book_sub.add_parser("pages", help="execute chapters as Quarto does and estimate their PDF pages "
                                     "(sftlab.book.checks.page_estimate, calibrated on a real render)")
    book_pages.add_argument("chapters", nargs="*", metavar="CHAPTER", help="chapter names (e.g. 05-training); default all")
    book_pages.set_defaults(func=_cmd_book_pages)
    inspect = sub.add_parser("inspect", help="measure inside a finished run's models once (attention by template "
                                             "segment, end-of-turn probability along replies): RUN/inside.json, "
                                             "which chapter 7 reads")
    inspect.add_argument("results_dir", help="a finished run folder, e.g. results/default")
    inspect.add_argument("--quiet", action="store_true", help="no progress bar")
    inspect.set_defaults(func=_cmd_inspect)
    card = sub.add_parser("card", help="write a finished run's adapter/README.md (model card) and set the adapter's "
                                       "base model to its Hub id")
    card.add_argument("results_dir", help="a finished run folder, e.g. results/default")
    card.set_defaults(func=_cmd_card)
    compare = sub.add_parser("compare", help="compare two runs' metrics: is each of B's values inside A's 95%% interval?")
    compare.add_argument("a", help="the reference run folder, e.g. results/default")
    compare.add_argument("b", help="the other run folder, e.g. a re-run from a fresh clone")
    compare.set_defaults(func=_cmd_compare)
    notebooks = sub.add_parser("notebooks", help="the chapters as Colab notebooks: export, execute, check badges")
    nb_sub = notebooks.add_subparsers(dest="notebooks_command", required=True)
    export = nb_sub.add_parser("export", help="write notebooks/<chapter>.ipynb for every chapter")
    export.add_argument("--out", type=Path, default=None, help="output folder (default: notebooks/)")
    export.add_argument("--check", action="store_true", help="write nothing; exit 1 if any notebook is out of date")
    export.set_defaults(func=_cmd_notebooks_export)
    execute = nb_sub.add_parser("execute", help="run every exported notebook; exit 1 if a cell fails")
    execute.add_argument("names", nargs="*", help="notebooks to run (default: all in --dir)")
    execute.add_argument("--dir", type=Path, default=None, help="folder of notebooks (default: notebooks/)")
    execute.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell (default: 900)")
    execute.set_defaults(func=_cmd_notebooks_execute)
    badges = nb_sub.add_parser("badges", help="check that every chapter carries its Colab badge (HTML only)")
    badges.set_defaults(func=_cmd_notebooks_badges)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SftlabError as exc:
        # Our own errors already name the bad key, record or file: show them without a traceback.
        print(f"sftlab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

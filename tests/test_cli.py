"""The `sftlab` command as a user meets it: reports on stdout, clear errors with exit code 2."""

from __future__ import annotations

import json

import yaml

from sftlab.cli import main


def _recipe(tmp_path, tiny_model_dir, **data):
    convs = tmp_path / "convs.jsonl"
    with convs.open("w") as f:
        for i in range(12):
            msgs = [{"role": "user", "content": f"Question number {i}?"},
                    {"role": "assistant", "content": f"Answer number {i}."}]
            f.write(json.dumps({"id": f"c{i}", "messages": msgs}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"id": "bad", "messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    recipe = {"model": {"base": str(tiny_model_dir)},
              "data": {"source": str(convs), "english_only": False, "min_tokens": None, "max_tokens": None,
                       "train_size": 8, "eval_size": 2, **data},
              "training": {"bf16": False}}  # the whole recipe is checked, training too (TRL's bf16 default needs a GPU)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_data_command_prints_counts_by_skip_reason(tmp_path, tiny_model_dir, capsys):
    assert main(["data", "--config", str(_recipe(tmp_path, tiny_model_dir))]) == 0
    out = capsys.readouterr().out
    assert "invalid_json" in out and "no_assistant_turn" in out
    assert "train" in out and "eval" in out


def test_data_command_json_report(tmp_path, tiny_model_dir, capsys):
    assert main(["data", "--config", str(_recipe(tmp_path, tiny_model_dir)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_read"] == 14 and sum(report["skipped"].values()) == 2


def test_unknown_key_exits_2_naming_the_key(tmp_path, tiny_model_dir, capsys):
    path = _recipe(tmp_path, tiny_model_dir, max_tokenz=5)
    assert main(["data", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.max_tokenz" in err and "max_tokens" in err and "Traceback" not in err


def test_help_of_the_command_and_of_every_subcommand_prints(capsys):
    # argparse expands "%" in help strings: a bare "95%" once made `sftlab --help` a TypeError.
    import argparse

    import pytest

    from sftlab.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for argv in [["--help"], *([name, "--help"] for name in subcommands)]:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0, argv
    out = capsys.readouterr().out
    assert "95% interval" in out and "usage: sftlab compare" in out


def _no_model_loads(monkeypatch):
    import sftlab.sources

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe was checked")

    monkeypatch.setattr(sftlab.sources, "load_model", refuse)
    monkeypatch.setattr(sftlab.sources, "load_tokenizer", refuse)


def test_run_of_a_recipe_with_only_a_name_lists_every_missing_key_and_creates_nothing(tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    path = tmp_path / "only-name.yaml"
    path.write_text("name: x\n")
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: model.base: required, missing" in err and f"{path}: data.source: required, missing" in err
    assert err.startswith("sftlab: error: ") and "Traceback" not in err and "--resume" not in err
    assert not results.exists()  # no results/.work-x/, not even the results folder


def test_run_of_a_recipe_with_only_a_model_fails_before_loading_it(tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    path = tmp_path / "only-model.yaml"
    path.write_text("model: {base: offline:gemma-3-270m}\n")
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "data.source: required, missing" in err and "model.base" not in err and "Traceback" not in err
    assert not results.exists()


def test_data_command_checks_the_whole_recipe_before_loading_anything(tmp_path, tiny_model_dir, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    path = _recipe(tmp_path, tiny_model_dir, eval_size=0)
    recipe = yaml.safe_load(path.read_text())
    recipe["lora"] = {"r": 0}
    path.write_text(yaml.safe_dump(recipe))
    assert main(["data", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: data.eval_size: expected a whole number >= 1" in err and f"{path}: lora.r: expected" in err


def test_book_pages_prints_each_chapter_and_the_main_text_apart_from_the_appendix(capsys, monkeypatch):
    import nbformat

    import sftlab.notebooks.quarto as quarto

    def fake_execute(path, root, *, executed, **kwargs):  # 960 words of prose: two pages
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(" ".join(["word"] * 960))]
        executed.append(nb)
        return 0.0

    monkeypatch.setattr(quarto, "execute_like_quarto", fake_execute)
    assert main(["book", "pages", "05-training", "appendix"]) == 0
    out = capsys.readouterr().out
    assert "05-training" in out and "appendix" in out and "06-evaluation" not in out
    assert "main text 2.0 pages, appendix 2.0" in out


def test_book_pages_names_a_chapter_that_does_not_exist(capsys):
    assert main(["book", "pages", "05-trainig"]) == 2
    err = capsys.readouterr().err
    assert "no such chapter(s): 05-trainig" in err and "05-training" in err

"""Everything that exists only to show results in the book, one module per kind of thing a chapter shows.

The core of sftlab (sources, data, chat, train, evaluate, metrics, experiment) computes and
writes `results/NAME/`; this package reads those files and turns them into what a reader
sees. Chapters import from here and from the core only.

    results       find and load a run (`load_results`), staleness, metric lookup, samples
    catalog       the systems and metrics: labels, colours, formats, meanings
    formatting    numbers and text as the book prints them ("0.175 [0.126, 0.216]", "12.6 min")
    display       show_table / show_markdown / show_chart / show_rich for HTML, PDF and notebooks
    tables        every results table (the question table, evaluation, recipe, run summary, data steps)
    numbers       the numbers the prose prints, group by group (-> _variables.yml, `variables`)
    claims        the claims the prose makes about the numbers, each checked against the results
    checks        what a render would get wrong (glyphs, tags, widgets, widths), and a page estimate
    cards         side-by-side reply cards
    charts        every Altair chart
    masks         tokens, templates and loss masks drawn for the reader
    demos         live base/SFT models: loading a run's models, generating, showing generations
    architecture  the model's shape and where its parameters are
    lora          LoRA parameter calculator, one trained update, update norms
    attention     chapter 7's reader of inside.json (sftlab.inspect): attention, end-of-turn probability
"""

import os as _os

# The book shows no progress bars: a saved widget is a blank box offline, and a bar is not
# content. Every chapter imports this package before it loads a model; transformers and the
# Hub read these at import, tqdm at each bar (TQDM_DISABLE, tqdm >= 4.66).
for _name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
    _os.environ.setdefault(_name, "1")
if "transformers" in __import__("sys").modules:  # imported before this package: switch its bars off too
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()


def _notebook_bars_off() -> None:
    """tqdm's notebook bar (what `tqdm.auto` gives in a kernel: transformers' GGUF dequantisation
    uses it on a machine's first load of the base model) passes `disable=False` to tqdm itself, so
    TQDM_DISABLE never reaches it; make its default `disable=True` instead (a caller that asks for
    a bar still gets one)."""
    import functools

    import tqdm.notebook

    bar = tqdm.notebook.tqdm
    if not getattr(bar.__init__, "_sftlab_quiet", False):
        quiet = functools.partialmethod(bar.__init__, disable=True)
        quiet._sftlab_quiet = True
        bar.__init__ = quiet


_notebook_bars_off()

"""sftlab: supervised fine-tuning of a small base model into a chat model with LoRA.

The core computes and writes `results/NAME/`: `sources` (models), `data` (conversations),
`chat` (templates and loss masks), `config` (run recipes), `train`, `evaluate`, `metrics`,
`ifeval`, `scoring`, `experiment` (`sftlab run`), `cli` (the `sftlab` command).
`sftlab.book` reads those results and turns them into what the book's chapters show.
"""

__version__ = "0.1.0"

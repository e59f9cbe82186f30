"""sftlab: supervised fine-tuning of a small base model into a chat model with LoRA.

Modules: `sources` (models), `data` (conversations), `chat` (templates and loss
masks), `config` (run recipes), `cli` (the `sftlab` command).
"""

__version__ = "0.1.0"

"""A tiny Hugging Face GPT-2 folder (1 layer, hidden 32, the real 21128-token vocab) for tests that need
a model but not a trained one: written by `transformers` as a hub folder would be, in about a second."""

from __future__ import annotations

import shutil
from pathlib import Path


def make_tiny_hf(folder: Path, vocab_file: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=21128, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=101)
    GPT2LMHeadModel(config).save_pretrained(folder)
    shutil.copy(vocab_file, folder / "vocab.txt")
    return folder

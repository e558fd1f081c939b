"""One entry point for generation and evaluation: a model and its tokenizer from a checkpoint or any readable format."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_zh.checkpoint.weights import checkpoint_tokenizer, load_checkpoint_weights
from megatron_zh.convert.formats import FORMATS, read_model
from megatron_zh.errors import ConfigError
from megatron_zh.model.gpt2 import GPT2Model, model_from_state_dict
from megatron_zh.text.tokenizer import BertChineseTokenizer

CHECKPOINT = "checkpoint"  # our own format: a pretrain_gpt.py --save directory


@dataclass
class LoadedModel:
    model: GPT2Model  # eval mode, float32, on CPU (the caller moves it)
    tokenizer: BertChineseTokenizer
    source: str  # "megatron_zh checkpoint DIR/TAG" | "Hugging Face folder DIR" | ...


def loadable_formats() -> list[str]:
    """What generate/evaluate can read: our checkpoints, and every format read from its path alone."""
    return [CHECKPOINT, *(name for name, spec in FORMATS.items() if spec.readable_alone)]


def load_model(
    source: str, fmt: str = CHECKPOINT, *, tag: str | None = None, vocab_file: str | None = None
) -> LoadedModel:
    """The model at `source`: our checkpoint directory (optional `tag`), or a folder of format `fmt`."""
    if fmt == CHECKPOINT:
        loaded = load_checkpoint_weights(source, tag)
        tokenizer = checkpoint_tokenizer(loaded, vocab_file)
        model = model_from_state_dict(loaded.model_config, loaded.state_dict)
        return LoadedModel(model, tokenizer, f"megatron_zh checkpoint {loaded.directory / loaded.tag}")
    if fmt not in loadable_formats():
        raise ConfigError(f"cannot load a model of format {fmt!r}; choose one of {', '.join(loadable_formats())}")
    if tag is not None:
        raise ConfigError(f"a tag selects a checkpoint of a checkpoint directory; {FORMATS[fmt].title} has none")
    external = read_model(fmt, source, vocab_file)
    assert external.vocab_file is not None  # readable_alone formats carry their vocab
    tokenizer = BertChineseTokenizer(
        external.vocab_file, lower_case=external.lower_case, normalization=external.normalization
    )
    if tokenizer.vocab_size > external.model_config.vocab_size:
        raise ConfigError(
            f"{external.vocab_file} has {tokenizer.vocab_size} tokens but the model in {source} only "
            f"{external.model_config.vocab_size} embeddings; it is not this model's vocab"
        )
    return LoadedModel(
        model_from_state_dict(external.model_config, external.state_dict), tokenizer, external.description
    )

"""Every external model format in one table, and the two drivers every conversion goes through.

    import_model("uer", "model.bin", "checkpoints/uer", vocab_file="vocab.txt", uer_config="config.json")
    export_checkpoint("hf", "checkpoints/stage2", "gpt2-distil-chinese")

Around a format's own read or write, the drivers do what every conversion needs: no output that
is, holds or lies inside an input (real paths compared); the checkpoint's fp32 master weights
read through checkpoint/weights.py; an import's vocab checked against its embeddings and written
as a checkpoint that `pretrain_gpt.py --load DIR --finetune` starts from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_zh.checkpoint.weights import load_checkpoint_weights, write_checkpoint
from megatron_zh.convert.hf.exporter import write_hf_export
from megatron_zh.convert.hf.importer import read_hf_folder
from megatron_zh.convert.interface import ExternalModel, ModelFormat
from megatron_zh.convert.uer.exporter import write_uer_export
from megatron_zh.convert.uer.importer import read_uer_model
from megatron_zh.errors import ConfigError
from megatron_zh.log import get_logger
from megatron_zh.paths import refuse_overlap
from megatron_zh.tokenizer import BertChineseTokenizer

logger = get_logger(__name__)

FORMATS: dict[str, ModelFormat] = {
    "hf": ModelFormat(
        "hf",
        "a Hugging Face GPT-2 folder",
        "the --hf folder",
        read=read_hf_folder,
        write=write_hf_export,
        readable_alone=True,
    ),
    "uer": ModelFormat(
        "uer", "a UER-py GPT-2 model file", "the UER-py model", read=read_uer_model, write=write_uer_export
    ),
}


def model_format(name: str, direction: str) -> ModelFormat:
    """The format called `name` that can `direction` ("read" or "write"); ConfigError naming the ones that can."""
    able = [key for key, spec in FORMATS.items() if getattr(spec, direction) is not None]
    if name not in able:
        raise ConfigError(f"no model format {name!r} to {direction}; choose one of {', '.join(able)}")
    return FORMATS[name]


def read_model(name: str, source: str | Path, vocab_file: str | Path | None = None, **options: Any) -> ExternalModel:
    spec = model_format(name, "read")
    assert spec.read is not None
    return spec.read(Path(source), None if vocab_file is None else Path(vocab_file), options)


def import_model(
    name: str,
    source: str | Path,
    output: str | Path,
    *,
    vocab_file: str | Path | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """`source` in format `name` as a new checkpoint directory `output`; returns its global_step0 folder."""
    spec = model_format(name, "read")
    inputs = [(spec.source_name, source), ("--vocab-file", vocab_file)]
    inputs += [
        (f"--{key.replace('_', '-')}", value) for key, value in options.items() if isinstance(value, (str, Path))
    ]
    refuse_overlap(output, inputs)
    model = read_model(name, source, vocab_file, **options)
    if model.vocab_file is None:
        raise ConfigError(f"{source} ({spec.title}) carries no vocab: pass --vocab-file, the vocab it was trained with")
    tokenizer = BertChineseTokenizer(model.vocab_file, lower_case=model.lower_case)
    if tokenizer.vocab_size > model.model_config.vocab_size:
        raise ConfigError(
            f"{model.vocab_file} has {tokenizer.vocab_size} tokens but the model only "
            f"{model.model_config.vocab_size} embeddings; it is not this model's vocab"
        )
    if not model.lower_case:
        logger.warning(
            "%s does not lower-case its text; pretrain_gpt.py tokenizes lower-cased (as the published "
            "Chinese GPT-2 models were trained)",
            model.description,
        )
    return write_checkpoint(
        output,
        model.model_config,
        model.state_dict,
        vocab_fingerprint=tokenizer.fingerprint,
        vocab_size=tokenizer.vocab_size,
        source=model.description,
        overwrite=overwrite,
    )


def export_checkpoint(
    name: str,
    checkpoint: str | Path,
    output: str | Path,
    *,
    tag: str | None = None,
    vocab_file: str | Path | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Any:
    """Checkpoint `tag` (default: the one `latest` names) of `checkpoint` written in format `name` at `output`;
    returns what the format's writer reports."""
    spec = model_format(name, "write")
    assert spec.write is not None
    output = Path(output)
    refuse_overlap(output, [("the checkpoint directory", checkpoint), ("--vocab-file", vocab_file)])
    loaded = load_checkpoint_weights(checkpoint, tag)
    flags = {"--checkpoint": checkpoint, "--tag": tag, "--vocab-file": vocab_file, "--output": output}
    command = " ".join([f"python tools/convert_to_{name}.py", *(f"{k} {v}" for k, v in flags.items() if v)])
    vocab = None if vocab_file is None else Path(vocab_file)
    return spec.write(loaded, output, vocab, overwrite, {**options, "command": command})

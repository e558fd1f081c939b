"""Every external model format in one table, and the two drivers every conversion goes through.

    import_model("uer", "model.bin", "checkpoints/uer", vocab_file="vocab.txt", uer_config="config.json")
    export_checkpoint("hf", "checkpoints/stage2", "gpt2-distil-chinese")

Around a format's own read or write, the drivers do what every conversion needs: no output that
is, holds or lies inside an input (real paths compared, the format's own path options included);
the checkpoint's fp32 master weights read through checkpoint/weights.py; an import's vocab checked
against its embeddings and written as a checkpoint that `pretrain_gpt.py --load DIR --finetune`
starts from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from megatron_zh.checkpoint.weights import load_checkpoint_weights, write_checkpoint
from megatron_zh.convert.hf.exporter import HFExportOptions, report_hf_export, write_hf_export
from megatron_zh.convert.hf.importer import read_hf_folder
from megatron_zh.convert.interface import Exporter, ExternalModel, Importer, ModelFormat
from megatron_zh.convert.uer.exporter import UERExportOptions, report_uer_export, write_uer_export
from megatron_zh.convert.uer.importer import UERImportOptions, read_uer_model
from megatron_zh.convert.uer.names import LAYER_NORM_NOTE
from megatron_zh.errors import ConfigError
from megatron_zh.knobs import flag_name
from megatron_zh.log import get_logger
from megatron_zh.paths import refuse_overlap
from megatron_zh.text.tokenizer import BertChineseTokenizer

logger = get_logger(__name__)

FORMATS: dict[str, ModelFormat] = {
    "hf": ModelFormat(
        "hf",
        "a Hugging Face GPT-2 folder",
        "the --hf folder",
        Importer(read_hf_folder, "--hf", "DIR"),
        Exporter(write_hf_export, "Hugging Face folder", "DIR", report_hf_export, HFExportOptions),
        readable_alone=True,
    ),
    "uer": ModelFormat(
        "uer",
        "a UER-py GPT-2 model file",
        "the UER-py model",
        Importer(read_uer_model, "--input", "MODEL.bin", UERImportOptions, notes=(LAYER_NORM_NOTE,)),
        Exporter(write_uer_export, "UER-py model file", "MODEL.bin", report_uer_export, UERExportOptions),
    ),
}


def model_format(name: str, direction: str) -> ModelFormat:
    """The format called `name` that can `direction` ("importer" or "exporter"); ConfigError naming those that can."""
    able = [key for key, spec in FORMATS.items() if getattr(spec, direction) is not None]
    if name not in able:
        what = "read" if direction == "importer" else "write"
        raise ConfigError(f"no model format {name!r} to {what}; choose one of {', '.join(able)}")
    return FORMATS[name]


def _input_paths(options: dict[str, Any]) -> list[tuple[str, Any]]:
    """The import options that name files (all of them inputs), as refuse_overlap takes them: (flag, path)."""
    return [(flag_name(key), value) for key, value in options.items() if isinstance(value, (str, os.PathLike))]


def read_model(name: str, source: str | Path, vocab_file: str | Path | None = None, **options: Any) -> ExternalModel:
    importer = model_format(name, "importer").importer
    assert importer is not None
    return importer.read(Path(source), None if vocab_file is None else Path(vocab_file), options)


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
    spec = model_format(name, "importer")
    refuse_overlap(output, [(spec.source_name, source), ("--vocab-file", vocab_file), *_input_paths(options)])
    model = read_model(name, source, vocab_file, **options)
    if model.vocab_file is None:
        raise ConfigError(f"{source} ({spec.title}) carries no vocab: pass --vocab-file, the vocab it was trained with")
    tokenizer = BertChineseTokenizer(model.vocab_file, lower_case=model.lower_case, normalization=model.normalization)
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
        normalization=tokenizer.normalization.identity,
        source=model.description,
        overwrite=overwrite,
    )


def export_checkpoint(
    name: str,
    checkpoint: str | Path,
    output: str | Path,
    *,
    tag: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Any:
    """Checkpoint `tag` (default: the one `latest` names) of `checkpoint` written in format `name` at `output`;
    returns what the format's writer reports. `options` are the format's (e.g. vocab_file for "hf")."""
    exporter = model_format(name, "exporter").exporter
    assert exporter is not None
    output = Path(output)
    # The format checks its own further outputs (a UER-py config beside the model file) the same way.
    refuse_overlap(output, [("the checkpoint directory", checkpoint), ("--vocab-file", options.get("vocab_file"))])
    loaded = load_checkpoint_weights(checkpoint, tag)
    flags = {"--to": name, "--checkpoint": checkpoint, "--tag": tag, "--output": output}
    flags.update({flag_name(key): value for key, value in options.items() if value is not None})
    command = " ".join(["python tools/convert_checkpoint.py", *(f"{k} {v}" for k, v in flags.items() if v)])
    return exporter.write(loaded, output, overwrite, {**options, "command": command})

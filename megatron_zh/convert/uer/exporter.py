"""Our checkpoint -> a UER-py GPT-2 model file and its config JSON, which UER-py's scripts load unchanged.

Written in UER-py's module order with `target.lm.output_layer.weight` as its own tensor equal to the
word embedding (names.py), each file under a temporary name renamed when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_zh.checkpoint.weights import LoadedCheckpoint
from megatron_zh.convert.uer.names import LAYER_NORM_NOTE, to_uer_config, to_uer_state_dict
from megatron_zh.errors import ConfigError
from megatron_zh.fileio import atomic_write
from megatron_zh.knobs import knob
from megatron_zh.log import get_logger
from megatron_zh.paths import refuse_overlap

logger = get_logger(__name__)


@dataclass(frozen=True)
class UERExport:
    model_file: Path
    config_file: Path
    checkpoint: str  # DIR/TAG
    weights_source: str
    parameters: int


def default_config_path(model_file: Path) -> Path:
    """MODEL.bin -> MODEL.json beside it (UER-py's models/ folder keeps the two side by side)."""
    return model_file.with_suffix(".json")


@dataclass(frozen=True)
class UERExportOptions:
    config_output: str | None = knob(
        None,
        help="where to write its UER-py config (default: MODEL.json beside MODEL.bin)",
        option="--uer-config-output",
        metavar="CONFIG.json",
    )


def write_uer_export(loaded: LoadedCheckpoint, output: Path, overwrite: bool, options: dict[str, Any]) -> UERExport:
    """Write a checkpoint's weights as a UER-py model file and config JSON (options: UERExportOptions' keys),
    each atomically. UER-py reads its vocab on its own: none is written or needed."""
    config_output = UERExportOptions(**{k: v for k, v in options.items() if k != "command"}).config_output
    config_path = Path(config_output) if config_output is not None else default_config_path(output)
    if output.resolve() == config_path.resolve():
        raise ConfigError(f"the model file and the config would both be {output}; pass --uer-config-output")
    # First: --overwrite cannot make a path inside the checkpoint right, so it is not the advice to give.
    refuse_overlap(config_path, [("the checkpoint directory", loaded.directory)], flag="--uer-config-output")
    for path in (output, config_path):
        if path.is_dir():
            raise ConfigError(f"output {path} is a directory; name a file (e.g. {path / 'model.bin'})")
        if path.exists() and not overwrite:
            raise ConfigError(f"output {path} exists; pass --overwrite to replace it")
    uer = to_uer_state_dict(loaded.state_dict, loaded.model_config)
    uer_config = to_uer_config(loaded.model_config)
    with atomic_write(output, "wb") as f:
        torch.save(uer, f)
    with atomic_write(config_path) as f:
        f.write(json.dumps(uer_config, indent=2) + "\n")
    logger.info("wrote %s and %s from %s (%s)", output, config_path, loaded.directory / loaded.tag, LAYER_NORM_NOTE)
    normalization = loaded.client_state.normalization
    if normalization not in (None, "none"):
        logger.warning(
            "the model was trained on normalised text (%s), and UER-py's format has no place to say so: normalise "
            "its inputs the same way (megatron_zh.text.normalization) or they meet [UNK] where training saw "
            "equivalents",
            normalization,
        )
    return UERExport(
        model_file=output,
        config_file=config_path,
        checkpoint=str(loaded.directory / loaded.tag),
        weights_source=loaded.weights_source,
        parameters=sum(t.numel() for t in loaded.state_dict.values()),
    )


def report_uer_export(result: UERExport) -> list[str]:
    return [
        f"exported {result.checkpoint} (weights: {result.weights_source}, {result.parameters:,} parameters)",
        f"wrote {result.model_file} (--load_model_path) and {result.config_file} (--config_path)",
        f"note: {LAYER_NORM_NOTE}",
    ]

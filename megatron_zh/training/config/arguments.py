"""Command line of pretrain_gpt.py: a ds_configs JSON file, overridden by Megatron-style flags.

The flags are derived from the knobs of `TrainConfig` (the pretrain block) and `DeepSpeedOverrides`
(batch sizes, lr, clipping, precision: they rewrite the DeepSpeed dict); each defaults to "not
given" so the JSON's value stands unless the flag is passed. The result is one `RunConfig`, checked for
consistency here (pure checks) and against files and hardware in training/preflight.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from megatron_zh.errors import ConfigError
from megatron_zh.knobs import add_flags, given_values
from megatron_zh.training.config.deepspeed_config import DeepSpeedOverrides, resolve_deepspeed_config
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.config.train_config import TrainConfig, load_config_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_gpt.py",
        description="Pretrain the Chinese GPT-2 with a DeepSpeed ZeRO engine. "
        "Example: deepspeed --num_gpus 8 pretrain_gpt.py --ds_config ds_configs/stage1.json",
    )
    parser.add_argument(
        "--ds_config",
        "--ds-config",
        "--deepspeed_config",
        dest="ds_config",
        required=True,
        help='DeepSpeed JSON with a "pretrain" block (ds_configs/stage1.json, stage2.json, cpu_tiny.json)',
    )
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        dest="local_rank",
        type=int,
        help="set by the deepspeed launcher; LOCAL_RANK in the environment takes precedence",
    )
    add_flags(parser, TrainConfig)
    add_flags(parser, DeepSpeedOverrides)
    return parser


def build_run_config(args: argparse.Namespace, world_size: int) -> RunConfig:
    """Merge the JSON file and the flags into a resolved RunConfig (pure checks only)."""
    ds, pretrain = load_config_file(args.ds_config)
    source = f"{args.ds_config}"
    train = TrainConfig.from_dict({**pretrain, **given_values(args, TrainConfig)}, source=f'{source} "pretrain"')
    flags = DeepSpeedOverrides(**given_values(args, DeepSpeedOverrides))
    deepspeed = resolve_deepspeed_config(ds, train, flags, world_size, source)
    model = train.model.build()
    if train.data.seq_length > model.max_position_embeddings:
        raise ConfigError(
            f"seq_length {train.data.seq_length} is longer than model {train.model.preset!r}'s "
            f"{model.max_position_embeddings} position embeddings; lower --seq-length or choose a larger model"
        )
    return RunConfig(train=train, model=model, deepspeed=deepspeed, world_size=world_size, config_file=source)


def parse_args(argv: Sequence[str] | None, world_size: int) -> tuple[argparse.Namespace, RunConfig]:
    args = build_parser().parse_args(argv)
    return args, build_run_config(args, world_size)

"""Command line of pretrain_gpt.py: a ds_configs JSON file, overridden by Megatron-style flags.

Every flag defaults to "not given" so the JSON's value stands unless the flag is passed. Flags
that belong to DeepSpeed's half (batch sizes, lr, clipping, precision) rewrite the DeepSpeed dict;
the rest replace fields of the pretrain block. The result is one `RunConfig`, checked for
consistency here (pure checks) and against files and hardware in `validation.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence

from megatron_zh.errors import ConfigError
from megatron_zh.training.config import RunConfig, TrainConfig, load_config_file
from megatron_zh.training.deepspeed_config import PRECISIONS, DeepSpeedOverrides, resolve_deepspeed_config

# Flags whose value 0 means "off" (Megatron's None).
_ZERO_MEANS_OFF = ("save_interval", "eval_interval", "exit_interval", "keep_last")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_gpt.py",
        description="Pretrain the Chinese GPT-2 with a DeepSpeed ZeRO engine. "
                    "Example: deepspeed --num_gpus 8 pretrain_gpt.py --ds_config ds_configs/stage1.json",
        argument_default=None,
    )
    parser.add_argument("--ds_config", "--ds-config", "--deepspeed_config", dest="ds_config", required=True,
                        help="DeepSpeed JSON with a \"pretrain\" block (ds_configs/stage1.json, stage2.json, cpu_tiny.json)")
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        help="set by the deepspeed launcher; LOCAL_RANK in the environment takes precedence")

    data = parser.add_argument_group("data (pretrain block)")
    data.add_argument("--data-path", nargs="+", help="dataset prefix(es), optionally weighted: 0.7 a 0.3 b")
    data.add_argument("--vocab-file")
    data.add_argument("--split", help='train,valid,test weights, e.g. "949,50,1"')
    data.add_argument("--seq-length", type=int)
    data.add_argument("--data-cache-path", help="directory for dataset index files")
    data.add_argument("--num-workers", type=int, help="DataLoader worker processes per rank")
    data.add_argument("--eod-mask-loss", action=argparse.BooleanOptionalAction, help="no loss on [SEP] inputs")

    model = parser.add_argument_group("model (pretrain block)")
    model.add_argument("--model", help="GPT2Config preset: gpt2-distil, gpt2-tiny, ...")

    schedule = parser.add_argument_group("training schedule")
    schedule.add_argument("--train-iters", type=int)
    schedule.add_argument("--micro-batch-size", type=int, help="per rank (DeepSpeed train_micro_batch_size_per_gpu)")
    schedule.add_argument("--global-batch-size", type=int,
                          help="samples per step over all ranks (DeepSpeed train_batch_size); "
                               "gradient accumulation = global / (micro x ranks)")
    schedule.add_argument("--lr", type=float, help="peak learning rate")
    schedule.add_argument("--min-lr", type=float,
                          help="WarmupDecayLR's warmup_min_lr: where warm-up starts and decay ends (default 0)")
    schedule.add_argument("--lr-warmup-fraction", type=float)
    schedule.add_argument("--lr-warmup-iters", type=int)
    schedule.add_argument("--clip-grad", type=float, help="gradient clipping norm (DeepSpeed gradient_clipping)")
    schedule.add_argument("--weight-decay", type=float)
    schedule.add_argument("--adam-beta1", type=float, help="AdamW beta1 (optimizer.params.betas[0])")
    schedule.add_argument("--adam-beta2", type=float, help="AdamW beta2 (optimizer.params.betas[1])")
    schedule.add_argument("--adam-eps", type=float, help="AdamW epsilon (optimizer.params.eps)")
    schedule.add_argument("--seed", type=int)
    precision = schedule.add_mutually_exclusive_group()
    for name in PRECISIONS:
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                               help=f"train in {name} (rewrites the DeepSpeed bf16/fp16 sections)")

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--save", help="checkpoint directory")
    ckpt.add_argument("--load", help="checkpoint directory to resume from (its `latest`)")
    ckpt.add_argument("--save-interval", type=int, help="0: only at the end")
    ckpt.add_argument("--keep-last", type=int, help="keep the newest K checkpoints (0: keep all)")
    ckpt.add_argument("--finetune", action=argparse.BooleanOptionalAction,
                      help="load only the weights from --load (fresh optimizer, schedule and sample counter)")
    ckpt.add_argument("--exit-interval", type=int, help="save and exit once the iteration is a multiple of this")

    logging = parser.add_argument_group("evaluation and logging")
    logging.add_argument("--eval-interval", type=int, help="0: only at the end")
    logging.add_argument("--eval-iters", type=int, help="validation batches (of the global batch size) per evaluation")
    logging.add_argument("--log-interval", type=int)
    logging.add_argument("--tensorboard-dir")
    logging.add_argument("--peak-tflops", type=float, help="per-device peak TFLOP/s for MFU (default: device table)")
    logging.add_argument("--max-nonfinite-steps", type=int,
                         help="stop when more than this many non-finite losses come in a row")
    return parser


_DEEPSPEED_FLAGS = tuple(f.name for f in dataclasses.fields(DeepSpeedOverrides))


def _pretrain_overrides(args: argparse.Namespace) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for name, value in vars(args).items():
        if name in fields and value is not None:
            overrides[name] = None if (name in _ZERO_MEANS_OFF and value == 0) else value
    return overrides


def build_run_config(args: argparse.Namespace, world_size: int) -> RunConfig:
    """Merge the JSON file and the flags into a resolved RunConfig (pure checks only)."""
    from megatron_zh.model import GPT2Config  # the model layer is imported only once a run is configured

    ds, pretrain = load_config_file(args.ds_config)
    source = f"{args.ds_config}"
    train = TrainConfig.from_dict({**pretrain, **_pretrain_overrides(args)}, source=f"{source} \"pretrain\"")
    flags = DeepSpeedOverrides(**{name: getattr(args, name) for name in _DEEPSPEED_FLAGS})
    deepspeed = resolve_deepspeed_config(ds, train, flags, world_size, source)
    model = GPT2Config.from_preset(train.model, **train.model_overrides)
    if train.seq_length > model.max_position_embeddings:
        raise ConfigError(
            f"seq_length {train.seq_length} is longer than model {train.model!r}'s "
            f"{model.max_position_embeddings} position embeddings; lower --seq-length or choose a larger model"
        )
    return RunConfig(train=train, model=model, deepspeed=deepspeed, world_size=world_size, config_file=source)


def parse_args(argv: Sequence[str] | None, world_size: int) -> tuple[argparse.Namespace, RunConfig]:
    args = build_parser().parse_args(argv)
    return args, build_run_config(args, world_size)

"""A run's whole configuration, resolved and consistent: the pretrain block, the model, the DeepSpeed dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron_zh.training.config.train_config import PRETRAIN_KEY, TrainConfig

if TYPE_CHECKING:  # the model layer (and torch) load only once a run is configured
    from megatron_zh.model.config import GPT2Config, Precision


@dataclass(frozen=True)
class RunConfig:
    """Everything a run uses, resolved and consistent: the pretrain block, the model, the DeepSpeed dict."""

    train: TrainConfig
    model: GPT2Config
    deepspeed: dict[str, Any]  # complete: batch sizes, lr, schedule and precision filled in
    world_size: int
    config_file: str

    @property
    def micro_batch_size(self) -> int:
        return self.deepspeed["train_micro_batch_size_per_gpu"]

    @property
    def global_batch_size(self) -> int:
        return self.deepspeed["train_batch_size"]

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.deepspeed["gradient_accumulation_steps"]

    @property
    def precision(self) -> Precision:
        if self.deepspeed.get("bf16", {}).get("enabled"):
            return "bf16"
        if self.deepspeed.get("fp16", {}).get("enabled"):
            return "fp16"
        return "fp32"

    @property
    def zero_stage(self) -> int:
        """DeepSpeed's ZeRO stage: above 0, checkpoints hold one optimizer file per rank."""
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.train.data.seq_length

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, as printed at start-up and saved beside the checkpoints."""
        return {
            "config_file": self.config_file,
            "world_size": self.world_size,
            "precision": self.precision,
            PRETRAIN_KEY: self.train.to_dict(),
            "model_config": self.model.to_dict(),
            "deepspeed": self.deepspeed,
        }

"""The run's datasets and loaders, built from the pretrain block through the data layer."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from megatron_zh.data.datasets.builder import build_train_valid_test_datasets, build_validation_sources
from megatron_zh.data.datasets.config import VocabIds
from megatron_zh.data.datasets.samplers import build_pretraining_data_loader
from megatron_zh.errors import MegatronZhError
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.distributed.process_group import DistEnv


def build_datasets(
    run: RunConfig, vocab_fingerprint: str, pad_token: int | None = None, normalization: str | None = None
):
    """(train, valid) datasets holding enough samples for train_iters steps and one evaluation.

    pad_token (the vocab's [PAD]) pads document-mode chunks; None: the datasets' metadata says.
    normalization: the text normalisation every dataset must have been tokenized with (None: unchecked)."""
    t = run.train
    # Every evaluation reads the same first eval_iters global batches of the validation split, so the
    # validation curve compares like with like.
    num_samples = (t.train_iters * run.global_batch_size, t.eval_iters * run.global_batch_size, 0)
    vocab = VocabIds(fingerprint=vocab_fingerprint, pad=pad_token, normalization=normalization)
    train, valid, _ = build_train_valid_test_datasets(t.data, num_samples, vocab)
    if train is None:
        raise MegatronZhError(f"split {t.data.split!r} leaves no training documents; give the first split a weight")
    return train, valid


def build_validation_datasets(
    run: RunConfig, vocab_fingerprint: str, pad_token: int | None = None, normalization: str | None = None
) -> Mapping[str, torch.utils.data.Dataset]:
    """Each --valid-data-path source by name, with the samples of one evaluation (the same ones every time)."""
    vocab = VocabIds(fingerprint=vocab_fingerprint, pad=pad_token, normalization=normalization)
    return build_validation_sources(run.train.data, run.train.eval_iters * run.global_batch_size, vocab)


def build_loaders(run: RunConfig, env: DistEnv, train_dataset, valid_dataset, consumed_samples: int):
    """This rank's training loader (resuming after consumed_samples) and validation loader."""
    train = build_pretraining_data_loader(
        train_dataset,
        consumed_samples,
        run.micro_batch_size,
        env.rank,
        env.world_size,
        num_workers=run.train.num_workers,
    )
    valid = build_pretraining_data_loader(valid_dataset, 0, run.micro_batch_size, env.rank, env.world_size)
    return train, valid


def build_validation_loaders(run: RunConfig, env: DistEnv, datasets: Mapping[str, torch.utils.data.Dataset]) -> dict:
    """This rank's loader of each validation source, by name."""
    return {
        name: build_pretraining_data_loader(dataset, 0, run.micro_batch_size, env.rank, env.world_size)
        for name, dataset in datasets.items()
    }


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}

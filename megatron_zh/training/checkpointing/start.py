"""Where a run starts: from scratch, resuming a checkpoint, or from a checkpoint's weights only.

Which checkpoint of a directory: the one `--ckpt-step N` names; else the one `latest` names; else,
when there is no `latest` (deleted, or lost in a copy), the newest complete one, said in one line:
complete checkpoints are never passed over for a fresh start.

`resolve_start` is cheap (it reads `latest`, client_state.json files and file sizes, no unpickling),
so the preflight can decide, and check the checkpoint against the run, before anything heavy starts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_zh.checkpoint.client_state import ClientState, read_client_state
from megatron_zh.checkpoint.completeness import complete_checkpoints, list_tags
from megatron_zh.checkpoint.layout import LATEST_FILE, read_latest_tag, tag_for
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.log import get_logger
from megatron_zh.text.normalization import NONE
from megatron_zh.text.tokenizer import check_fingerprint
from megatron_zh.training.config.run_config import RunConfig
from megatron_zh.training.config.train_config import TrainConfig

logger = get_logger(__name__)

# Model config fields that fix the weights' shapes: a checkpoint only loads into a model with the same.
SHAPE_FIELDS = (
    "vocab_size",
    "max_position_embeddings",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "ffn_hidden_size",
)
# Train config fields that decide which sample comes next: changing them on resume changes the data order.
DATA_ORDER_FIELDS = ("data_path", "seq_length", "split", "seed")


@dataclass
class TrainState:
    """The counters a checkpoint carries forward."""

    iteration: int = 0
    consumed_samples: int = 0
    # The loss of each step since the last logged one (None: non-finite), so that the first logged loss
    # of a resumed run averages the same steps as an uninterrupted run's (training/loop.py LogWindow).
    unlogged_losses: list[float | None] = field(default_factory=list)


StartMode = Literal["scratch", "resume", "finetune"]
ChosenBy = Literal["latest", "--ckpt-step", "newest complete"]


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: from scratch, resuming a checkpoint, or from a checkpoint's weights only."""

    mode: StartMode
    directory: str | None = None  # set, with tag and info, unless mode is "scratch"
    tag: str | None = None
    info: ClientState | None = None  # the checkpoint's client state (without RNG states)
    # Tag of a DeepSpeed universal copy of `tag` to load instead (set by resume.prepare_resume when the
    # data-parallel size changed since the save).
    universal: str | None = None
    chosen_by: ChosenBy = "latest"  # how `tag` was chosen among the directory's checkpoints

    @property
    def folder(self) -> Path:
        """The checkpoint's folder, DIRECTORY/TAG."""
        if self.directory is None or self.tag is None:
            raise CheckpointError("a run started from scratch has no checkpoint folder")
        return Path(self.directory) / self.tag


def _default_tag(directory: str, zero: bool) -> tuple[str | None, ChosenBy]:
    """The tag `latest` names; without `latest`, the newest complete checkpoint (None: there is none)."""
    tag = read_latest_tag(directory) if Path(directory).is_dir() else None
    if tag is not None:
        if not (Path(directory) / tag).is_dir():
            complete = complete_checkpoints(directory, zero)
            fix = f"pass --ckpt-step {complete[-1][0]} to start from the newest" if complete else "remove `latest`"
            raise CheckpointError(
                f"{Path(directory) / LATEST_FILE} names {tag}, but {Path(directory) / tag} does not exist "
                f"(complete checkpoints there: {list_tags(complete)}); {fix}"
            )
        return tag, "latest"
    complete = complete_checkpoints(directory, zero)
    if not complete:
        return None, "latest"
    newest = complete[-1][1].name
    logger.info(  # rank 0 says it (every rank decides the same)
        "%s has no `latest` file: starting from %s, the newest complete checkpoint there (complete: %s)",
        directory,
        newest,
        list_tags(complete),
    )
    return newest, "newest complete"


def _chosen_tag(train: TrainConfig, directory: str, zero: bool) -> tuple[str | None, ChosenBy]:
    """The checkpoint of --load to start from: --ckpt-step's, else _default_tag's."""
    if train.ckpt_step is None:
        return _default_tag(directory, zero)
    tag = tag_for(train.ckpt_step)
    if not (Path(directory) / tag).is_dir():
        raise ConfigError(
            f"--ckpt-step {train.ckpt_step}: {Path(directory) / tag} does not exist "
            f"(complete checkpoints in {directory}: {list_tags(complete_checkpoints(directory, zero))})"
        )
    latest = None
    with contextlib.suppress(CheckpointError):  # a damaged `latest` may be why --ckpt-step was given
        latest = read_latest_tag(directory)
    if latest != tag:
        logger.info("--ckpt-step %d: starting from %s/%s (`latest` names %s)", train.ckpt_step, directory, tag, latest)
    return tag, "--ckpt-step"


def resolve_start(train: TrainConfig, zero: bool = True) -> StartPoint:
    """Decide where the run starts. Cheap: reads `latest`, client_state.json files and file sizes.

    A stage-2 style run (finetune) that already has a checkpoint in its own save directory resumes
    that one instead of starting over from the stage-1 weights, so a pre-empted job can simply be
    resubmitted with the same command. `zero`: whether the run's checkpoints hold ZeRO optimizer files
    (what "complete" asks of them).
    """
    if train.finetune and train.save:
        saved, chosen_by = _default_tag(train.save, zero)
        if saved is not None:
            logger.info(
                "%s already holds checkpoint %s: resuming it instead of starting again from %s",
                train.save,
                saved,
                train.load,
            )
            return StartPoint("resume", train.save, saved, read_client_state(train.save, saved), chosen_by=chosen_by)
    if train.load is None:
        return StartPoint("scratch")
    tag, chosen_by = _chosen_tag(train, train.load, zero)
    if tag is None:
        if train.finetune:
            raise ConfigError(
                f"finetune: no checkpoint to start from in {train.load} (no `latest` file, no complete "
                "global_step* folder); train stage 1 first or point --load at its save directory"
            )
        logger.warning(
            "no checkpoint in %s (no `latest` file, no complete global_step* folder): starting from scratch", train.load
        )
        return StartPoint("scratch")
    info = read_client_state(train.load, tag)
    planned = (info.train_config or {}).get("train_iters")
    if train.finetune and isinstance(planned, int) and info.iteration < planned:
        logger.warning(
            "starting from %s/%s at iteration %s, but the run that wrote it planned %d iterations: "
            "it has not finished (pass --load of a finished run, or resume it first)",
            train.load,
            tag,
            info.iteration,
            planned,
        )
    mode: StartMode = "finetune" if train.finetune else "resume"
    return StartPoint(mode, train.load, tag, info, chosen_by=chosen_by)


def check_compatible(start: StartPoint, run: RunConfig, vocab_fingerprint: str, normalization: str) -> None:
    """The checkpoint must have been trained with this vocab and have this model's shapes; a resumed run
    must read data tokenized with the text normalisation it was trained on."""
    if start.info is None:
        return
    where = f"{start.directory}/{start.tag}"
    check_fingerprint(
        start.info.vocab_fingerprint,
        vocab_fingerprint,
        source=f"checkpoint {where}",
        fix=f"{run.train.vocab_file} is not the vocab it was trained with; use that one",
        error=ConfigError,
    )
    trained_on = start.info.normalization or NONE
    if trained_on != normalization:
        message = (
            f"checkpoint {where} was trained on data with text normalisation {trained_on!r}, this run's data has "
            f"{normalization!r}"
        )
        if start.mode == "resume":
            raise ConfigError(f"{message}; resume on data preprocessed with the same --normalize")
        logger.warning("%s; the model meets characters in a form it was not trained on", message)
    saved_model = start.info.model_config
    mismatched = [
        f"{k}: checkpoint {saved_model[k]} vs run {getattr(run.model, k)}"
        for k in SHAPE_FIELDS
        if k in saved_model and saved_model[k] != getattr(run.model, k)
    ]
    if mismatched:
        raise ConfigError(
            f"checkpoint {where} does not fit model {run.train.model.preset!r} ({'; '.join(mismatched)}); "
            "choose the preset it was trained with"
        )
    saved_train = start.info.train_config or {}
    changed = [
        f"{k} {saved_train[k]!r} -> {v!r}"
        for k, v in run.train.to_dict().items()
        if k in DATA_ORDER_FIELDS and k in saved_train and saved_train[k] != v
    ]
    if start.mode == "resume" and changed:
        logger.warning(
            "resuming %s with %s: the run continues, but not on the sample an uninterrupted run would have read next",
            where,
            ", ".join(changed),
        )

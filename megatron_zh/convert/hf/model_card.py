"""The README.md model card of a Hugging Face export, as the published UER-py models carry one.

Every number on the card is read from the checkpoint and the files around it: the weights
(parameter count), the client state (steps, samples, sequence length, precision, ranks, text
normalisation), the run's config.json (batch, learning rate, optimizer, the kernels its self-check chose,
the command line), the datasets' PREFIX.meta.json (documents, tokens, [UNK] share, summarised by input: an
archive is named once however many members it has) and metrics.jsonl (validation loss, per validation
source too). A stage that started from another checkpoint (`--finetune`) is followed to that one. Whatever cannot be
found is written as missing, never guessed.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_zh.checkpoint.client_state import read_client_state
from megatron_zh.checkpoint.layout import METRICS_FILE, RUN_CONFIG_FILE
from megatron_zh.checkpoint.weights import LoadedCheckpoint, resolve_tag
from megatron_zh.convert.hf.card_usage import normalization_lines, usage_lines
from megatron_zh.data.datasets.blended_dataset import parse_data_path
from megatron_zh.data.datasets.config import validation_sources
from megatron_zh.data.indexed.dataset import read_metadata
from megatron_zh.errors import MegatronZhError
from megatron_zh.fileio import read_json_object
from megatron_zh.training.metrics import read_metrics

MODEL_CARD_FILE = "README.md"
MAX_STAGES = 8  # a chain of --finetune starts longer than this is cut (and a cycle cannot loop)
MISSING = "not recorded"
MAX_INPUTS_SHOWN = 10  # inputs named per dataset; PREFIX.meta.json lists them all


@dataclass
class Stage:
    """One run of pretrain_gpt.py, as its checkpoint and save directory record it."""

    checkpoint: str  # DIR/TAG
    client_state: dict[str, Any]
    run_config: dict[str, Any] | None  # the save directory's config.json
    last_eval: dict[str, Any] | None  # the last validation of the split at or before this checkpoint
    source_evals: list[dict[str, Any]] = field(default_factory=list)  # each --valid-data-path source's, then
    origin: str = ""  # where its weights started
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    """The card says "not recorded" for what a missing or damaged file would have told."""
    try:
        return read_json_object(path, MegatronZhError)
    except MegatronZhError:
        return None


def _stage(directory: Path, tag: str, client_state: dict[str, Any]) -> Stage:
    iteration = client_state.get("iteration")
    evals = [
        r for r in read_metrics(directory / METRICS_FILE, "eval") if iteration is None or r["iteration"] <= iteration
    ]
    split = [r for r in evals if not r.get("source")]
    at = (split or evals)[-1]["iteration"] if evals else None
    stage = Stage(
        str(directory / tag),
        client_state,
        _read_json(directory / RUN_CONFIG_FILE),
        split[-1] if split else None,
        [r for r in evals if r.get("source") and r["iteration"] == at],
    )
    train = client_state.get("train_config") or {}
    if stage.run_config is not None and stage.run_config.get("pretrain") not in (None, train):
        stage.notes.append(
            f"{directory / RUN_CONFIG_FILE} holds a later start's settings than this checkpoint's; "
            "its batch, learning rate and command may not be this checkpoint's"
        )
    return stage


def collect_stages(loaded: LoadedCheckpoint) -> tuple[list[Stage], str]:
    """The training stages behind `loaded`, first stage first, and where the first one's weights came from."""
    stages: list[Stage] = []
    # The card reads the client state as the JSON it is on disk: any key may be absent in old checkpoints.
    directory, tag, client_state = loaded.directory, loaded.tag, loaded.client_state.to_dict()
    while True:
        if client_state.get("train_config") is None:  # written by an import, not by training
            origin = f"{directory / tag}, imported from {client_state.get('source') or MISSING}"
            if stages:
                stages[-1].origin = f"the weights of {origin}"
            break
        stage = _stage(directory, tag, client_state)
        stages.append(stage)
        train = client_state["train_config"]
        if not (train.get("finetune") and train.get("load")) or len(stages) >= MAX_STAGES:
            model = client_state.get("model_config") or {}
            origin = f"random initialisation, N(0, {model.get('init_std', MISSING)}), seed {train.get('seed', MISSING)}"
            break
        try:
            directory, tag = resolve_tag(train["load"])
            client_state = read_client_state(directory, tag).to_dict()
        except MegatronZhError as exc:
            origin = f"the weights of {train['load']}, which cannot be read now ({exc})"
            break
        stage.origin = f"the weights of {directory / tag} (the checkpoint its `latest` names now)"
    stages.reverse()
    if stages:
        stages[0].origin = stages[0].origin or origin
    return stages, origin


def _fmt(value: Any, spec: str = "") -> str:
    return MISSING if value is None else format(value, spec)


def _datasets(train: dict[str, Any]) -> list[str]:
    """One line per dataset of the run: name, documents and tokens from PREFIX.meta.json."""
    try:
        prefixes, weights = parse_data_path(list(train.get("data_path") or []))
    except MegatronZhError:
        return [f"data_path {train.get('data_path')!r} ({MISSING} in a readable form)"]
    lines = []
    for i, prefix in enumerate(prefixes):
        weight = f", blend weight {weights[i]:g}" if weights else ""
        try:
            meta = read_metadata(prefix)
        except MegatronZhError:
            meta = None
        if meta is None:
            lines.append(f"`{Path(prefix).name}`{weight}: documents and tokens unknown ({prefix}.meta.json not found)")
            continue
        unk = meta.get("unk") or {}
        share = f", [UNK] {unk['unk_share']:.2%}" if "unk_share" in unk else ""
        normalised = meta.get("normalization", "none")
        normalised = "" if normalised == "none" else f"; text normalised: {normalised}"
        lines.append(
            f"`{Path(prefix).name}`{weight}: {_fmt(meta.get('documents'), ',')} documents, "
            f"{_fmt(meta.get('tokens'), ',')} tokens{share} (from {_inputs(meta)}; framing [CLS] text [SEP]"
            f"{normalised})"
        )
    return lines


def _dataset_names(train: dict[str, Any]) -> str:
    try:
        prefixes, _ = parse_data_path(list(train.get("data_path") or []))
    except MegatronZhError:
        return f"data_path {train.get('data_path')!r}"
    return ", ".join(f"`{Path(prefix).name}`" for prefix in prefixes)


def _validation_sources(train: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, its dataset line) of each --valid-data-path source of the run."""
    try:
        sources = validation_sources(tuple(train.get("valid_data_path") or ()))
    except MegatronZhError:
        return []
    return [(name, _datasets({"data_path": [prefix]})[0]) for name, prefix in sources]


def _inputs(meta: dict[str, Any]) -> str:
    """Each input file or archive once, with its members, size, documents, tokens and [UNK] share."""
    summary = meta.get("by_input")
    if not isinstance(summary, list):  # a dataset made before the summary: its inputs' names, once each
        names = dict.fromkeys(Path(str(item.get("path", "?"))).name for item in meta.get("inputs", []))
        return ", ".join(names) or MISSING
    shown = []
    for entry in summary[:MAX_INPUTS_SHOWN]:
        members = entry.get("members", 0)
        what = f"{members} member{'s' * (members != 1)}, " if members else ""
        shown.append(
            f"{Path(str(entry['path'])).name} ({what}{entry['bytes'] / 1e6:,.1f} MB, {entry['documents']:,} "
            f"documents, {entry['tokens']:,} tokens, [UNK] {entry['unk_share']:.2%})"
        )
    if len(summary) > MAX_INPUTS_SHOWN:
        shown.append(f"and {len(summary) - MAX_INPUTS_SHOWN:,} more inputs (listed in its .meta.json)")
    return ", ".join(shown)


def _command(stage: Stage) -> str:
    argv = (stage.run_config or {}).get("argv")
    if not argv:
        return f"{MISSING} (checkpoint written before pretrain_gpt.py recorded its command line)"
    kept, skip = [], False
    for arg in argv:  # the launcher's per-rank flag is not part of the command a user types
        if skip or arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            skip = False
            continue
        if arg in ("--local_rank", "--local-rank"):
            skip = True
            continue
        kept.append(arg)
    return " ".join(shlex.quote(str(a)) for a in kept)


def _stage_lines(number: int, stage: Stage) -> list[str]:
    state, run = stage.client_state, stage.run_config or {}
    train = state.get("train_config") or {}
    ds = run.get("deepspeed") or {}
    params = (ds.get("optimizer") or {}).get("params") or {}
    iteration, samples = state.get("iteration"), state.get("consumed_samples")
    world = state.get("world_size")
    batch = ds.get("train_batch_size")
    micro = ds.get("train_micro_batch_size_per_gpu")
    batch_text = (
        f"{batch} sequences per step ({micro} per rank x {world} ranks x {ds.get('gradient_accumulation_steps')} "
        "accumulation)"
        if batch is not None
        else f"{MISSING} in config.json"
    )
    if iteration and samples is not None:
        batch_text += f"; the checkpoint's {samples:,} samples over {iteration:,} steps average {samples / iteration:g}"
    lines = [
        f"**Stage {number}** (`{stage.checkpoint}`)",
        "",
        f"- starts from: {stage.origin}",
        f"- steps: {_fmt(iteration, ',')} done of {_fmt(train.get('train_iters'), ',')} planned",
        f"- sequence length: {_fmt(train.get('seq_length'))}",
        f"- batch: {batch_text}",
        f"- learning rate: peak {_fmt(params.get('lr'), 'g')}, {_schedule(ds)}",
        f"- optimizer: {_optimizer(ds)}",
        f"- precision: {_fmt(state.get('precision'))}; data-parallel ranks (GPUs): {_fmt(world)}",
        f"- kernels: {_kernels(run.get('kernels'))}; torch.compile: {_compiled(train.get('compile'))}",
        "- data: " + _dataset_names(train) + f" (stage {number} under Training data)",
        f"- command: `{_command(stage)}`",
    ]
    lines += [f"- note: {note}" for note in stage.notes]
    return lines + [""]


def _kernels(record: Any) -> str:
    """The fused ops' backends as the run's start-up self-check chose them (config.json's "kernels")."""
    if not isinstance(record, dict) or not isinstance(record.get("ops"), dict):
        return f"{MISSING} (config.json written before runs recorded their kernels)"
    used = ", ".join(f"{op} {backend}" for op, backend in record["ops"].items()) or "no fused ops"
    checks = record.get("self_check") or {}
    failed = [op for op, check in checks.items() if isinstance(check, dict) and not check.get("ok")]
    if not checks:
        how = record.get("note") or "not checked"
    elif failed:
        how = f"self-check on {record.get('where', MISSING)}: {', '.join(failed)} failed and ran PyTorch code"
    else:
        how = f"self-check passed on {record.get('where', MISSING)}"
    return f"{used} ({how})"


def _compiled(value: Any) -> str:
    return MISSING if value is None else ("on" if value else "off")


def _schedule(ds: dict[str, Any]) -> str:
    scheduler = ds.get("scheduler") or {}
    p = scheduler.get("params") or {}
    if scheduler.get("type") != "WarmupDecayLR":
        return f"schedule {scheduler.get('type', MISSING)}"
    # DeepSpeed's WarmupDecayLR decays to warmup_min_lr (its default 0), reached at total_num_steps.
    floor = _fmt(p.get("warmup_min_lr", 0.0), "g")
    return (
        f"{p.get('warmup_type', 'log')} warm-up over {_fmt(p.get('warmup_num_steps'), ',')} steps from {floor}, "
        f"then linear decay to {floor} at step {_fmt(p.get('total_num_steps'), ',')}"
    )


def _optimizer(ds: dict[str, Any]) -> str:
    optimizer = ds.get("optimizer") or {}
    if not optimizer:
        return MISSING
    p = optimizer.get("params") or {}
    shown = {k: p[k] for k in ("betas", "eps", "weight_decay", "bias_correction") if k in p}
    clipping = ds.get("gradient_clipping")
    clip = "no gradient clipping" if clipping == 0 else f"gradient clipping {_fmt(clipping, 'g')}"
    return f"{optimizer.get('type', MISSING)} {json.dumps(shown)}, {clip}"


def render_model_card(loaded: LoadedCheckpoint, *, model_name: str, export: dict[str, Any]) -> str:
    """The card's Markdown. `export`: the ExportResult fields (self-check figures) and the export command."""
    config = loaded.model_config
    parameters = sum(t.numel() for t in loaded.state_dict.values())  # the tied LM head is one tensor
    stages, origin = collect_stages(loaded)
    last = stages[-1] if stages else None
    normalization = loaded.client_state.normalization or "none"
    lines = [
        "---",
        "language: zh",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "---",
        "",
        f"# {model_name}",
        "",
        "## Model description",
        "",
        f"A Chinese GPT-2 language model (megatron_zh): {config.num_layers} layers, hidden size "
        f"{config.hidden_size}, {config.num_attention_heads} attention heads, feed-forward size "
        f"{config.ffn_hidden_size}, {config.max_position_embeddings} positions, a BERT-Chinese WordPiece "
        f"vocabulary of {_fmt(loaded.client_state.vocab_size, ',')} tokens in {config.vocab_size:,} "
        f"embeddings, {parameters:,} parameters (LM head tied to the word embedding). Pre-LayerNorm blocks, "
        "GELU tanh form (`gelu_new`). Exported from checkpoint "
        f"`{loaded.directory / loaded.tag}` ({loaded.weights_source}); vocab {loaded.vocab_fingerprint}.",
        "",
        *normalization_lines(normalization),
        *usage_lines(model_name, config.max_position_embeddings),
        "## Training data",
        "",
    ]
    if last is None:
        lines += [f"No training recorded: the checkpoint was imported from {origin}.", ""]
    else:
        for number, stage in enumerate(stages, 1):
            train = stage.client_state.get("train_config") or {}
            lines += [f"- stage {number}: " + "; ".join(_datasets(train))]
            sources = [f"`{name}` = {line}" for name, line in _validation_sources(train)]
            lines += [f"  - validation source {line}" for line in sources]
        lines += [""]
    lines += ["## Training procedure", ""]
    if last is None:
        lines += [f"{MISSING}: the checkpoint holds imported weights (from {origin}), no training run.", ""]
    for number, stage in enumerate(stages, 1):
        lines += _stage_lines(number, stage)
    lines += ["## Evaluation", ""]
    record = last.last_eval if last is not None else None
    if record is None:
        lines += [f"Validation loss: {MISSING} (no validation in the run's {METRICS_FILE}).", ""]
    else:
        lines += [
            f"Last validation before this checkpoint, at step {record['iteration']:,} on the `{record['split']}` "
            f"split ({record['tokens']:,} tokens): loss {record['loss']:.4f} nats/token, "
            f"perplexity {record['ppl']:.2f}.",
            "",
        ]
    for source in last.source_evals if last is not None else []:
        lines.append(
            f"- validation source `{source['source']}` at step {source['iteration']:,} ({source['tokens']:,} tokens): "
            f"loss {source['loss']:.4f} nats/token, perplexity {source['ppl']:.2f}"
        )
    if last is not None and last.source_evals:
        lines.append("")
    lines += [
        f"The export's self-check: max |logit difference| between this folder and the checkpoint "
        f"{export['max_logit_diff']:.3g} over {export['self_check_tokens']:,} tokens (fp32).",
        "",
        "## How it was made",
        "",
        "```bash",
        *[_command(stage) for stage in stages],
        export["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: Path, loaded: LoadedCheckpoint, *, model_name: str, export: dict[str, Any]) -> Path:
    path = folder / MODEL_CARD_FILE
    path.write_text(render_model_card(loaded, model_name=model_name, export=export), encoding="utf-8")
    return path

"""Autoregressive text generation with a `GPT2Model` and the BERT-Chinese tokenizer.

A prompt is framed as training framed documents, `[CLS] tokens` (no `[SEP]`: the document goes
on), and generation stops at `[SEP]`, the end of the document, unless told to run on. A batch
holds prompts of any lengths (`CachedDecoder` left-pads them). When a sequence outgrows the
model's positions, the context slides: the next token is predicted from the last
`max_position_embeddings` tokens, as nanoGPT's `generate` crops its context.

    result = generate(model, tokenizer, ["今天天气"], GenerationConfig(max_new_tokens=32))
    for piece in stream_text(model, tokenizer, "今天天气", GenerationConfig(max_new_tokens=32)):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from megatron_zh.errors import ConfigError
from megatron_zh.inference.decoder import CachedDecoder
from megatron_zh.inference.sampling import DECODING, SamplingConfig, choose_tokens, row_generators
from megatron_zh.inference.streaming import TextStream
from megatron_zh.knobs import knob, nested
from megatron_zh.model import GPT2Model
from megatron_zh.text.tokenizer import BertChineseTokenizer
from megatron_zh.validators import POSITIVE_INT, validate_fields


@dataclass(frozen=True)
class GenerationConfig:
    """How much to generate and how each token is chosen (tools/generate.py's decoding flags)."""

    max_new_tokens: int = knob(64, help="tokens to generate per prompt", check=POSITIVE_INT, group=DECODING)
    sampling: SamplingConfig = nested(SamplingConfig)
    stop_at_eod: bool = knob(
        True,
        help="end a prompt's generation at [SEP], the end of a document (--no-stop-at-eod: run on into a new one, "
        "printed as a line break)",
        group=DECODING,
    )

    def __post_init__(self) -> None:
        validate_fields(self, "generation config")


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str  # the continuation only; prompt + text is the whole
    prompt_ids: list[int]  # [CLS] + the prompt's tokens
    token_ids: list[int]  # the new tokens (with the final [SEP] when it ended the document)
    ended_document: bool  # stopped at [SEP] rather than at max_new_tokens


def encode_prompt(tokenizer: BertChineseTokenizer, text: str) -> list[int]:
    """[CLS] + the text's tokens: the start of a document as preprocessing frames one."""
    return [tokenizer.cls] + tokenizer.encode(text)


def generate_token_ids(
    model: GPT2Model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    eod_id: int,
    pad_id: int,
    row_ids: Sequence[int] | None = None,
    vocab_size: int | None = None,
) -> Iterator[tuple[int, int]]:
    """Yield (prompt index, new token id) as tokens are chosen, one round per step over the
    prompts still going. `row_ids` name each prompt's random stream (default 0, 1, ...), so a
    prompt gets the same sample whichever batch it is generated in. Ids from `vocab_size` up
    (embedding rows a padded vocabulary leaves unused) are never chosen."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token (encode_prompt gives [CLS] at least)")
    row_ids = list(range(len(prompts))) if row_ids is None else list(row_ids)
    if len(row_ids) != len(prompts):
        raise ConfigError(f"{len(row_ids)} row ids for {len(prompts)} prompts")
    max_positions = model.config.max_position_embeddings
    sequences = [list(p) for p in prompts]
    generators = row_generators(config.sampling.seed, row_ids)
    active = list(range(len(prompts)))  # prompt index of each decoder row
    decoder = CachedDecoder(model, pad_id)

    def prefill(remaining: int) -> torch.Tensor:
        windows = [sequences[i][-max_positions:] for i in active]
        # Steps possible before the longest row reaches the last position and the window must slide.
        room = max_positions - max(len(w) for w in windows)
        return decoder.prefill(windows, extra_columns=min(remaining, room))

    logits = prefill(config.max_new_tokens)
    for step in range(config.max_new_tokens):
        chosen = choose_tokens(logits[:, :vocab_size], config.sampling, [generators[i] for i in active])
        still_going = []
        for row, (index, token) in enumerate(zip(active, chosen)):
            sequences[index].append(token)
            yield index, token
            if not (config.stop_at_eod and token == eod_id):
                still_going.append(row)
        remaining = config.max_new_tokens - step - 1
        if not still_going or remaining == 0:
            return
        if len(still_going) < len(active):
            decoder.keep_rows(still_going)
            active = [active[row] for row in still_going]
            chosen = [chosen[row] for row in still_going]
        if max(len(sequences[i]) for i in active) > max_positions or decoder.free_columns < 1:
            logits = prefill(remaining)  # slide the window: positions shift, the cache cannot be reused
        else:
            logits = decoder.step(torch.tensor(chosen))


def generate(
    model: GPT2Model,
    tokenizer: BertChineseTokenizer,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    on_text: Callable[[int, str], None] | None = None,
    first_row_id: int = 0,
) -> list[Generation]:
    """Continue each prompt; `on_text(prompt index, piece)` receives the text as it is generated.

    Prompt i draws from random stream `first_row_id + i` (see `generate_token_ids`).
    """
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    new_ids: list[list[int]] = [[] for _ in prompts]
    texts: list[list[str]] = [[] for _ in prompts]
    for index, token, piece in _generate_text(model, tokenizer, prompt_ids, config, first_row_id):
        new_ids[index].append(token)
        texts[index].append(piece)
        if on_text is not None and piece:
            on_text(index, piece)
    return [
        Generation(
            prompt=prompt,
            text="".join(pieces),
            prompt_ids=ids,
            token_ids=new,
            ended_document=config.stop_at_eod and bool(new) and new[-1] == tokenizer.eod,
        )
        for prompt, pieces, ids, new in zip(prompts, texts, prompt_ids, new_ids)
    ]


def stream_text(
    model: GPT2Model, tokenizer: BertChineseTokenizer, prompt: str, config: GenerationConfig, *, row_id: int = 0
) -> Iterator[str]:
    """The continuation of one prompt, piece by piece as tokens arrive (the text `generate` returns)."""
    for _, _, piece in _generate_text(model, tokenizer, [encode_prompt(tokenizer, prompt)], config, row_id):
        if piece:
            yield piece


def _generate_text(
    model: GPT2Model,
    tokenizer: BertChineseTokenizer,
    prompt_ids: list[list[int]],
    config: GenerationConfig,
    first_row_id: int,
) -> Iterator[tuple[int, int, str]]:
    """(prompt index, token id, text piece) per new token; the [SEP] that ends a document adds no text."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens ({tokenizer.vocab_file}) but the model "
            f"only {model.config.vocab_size} token embeddings; use the vocab the model was trained with"
        )
    streams = [TextStream(tokenizer, ids) for ids in prompt_ids]
    row_ids = range(first_row_id, first_row_id + len(prompt_ids))
    for index, token in generate_token_ids(
        model,
        prompt_ids,
        config,
        eod_id=tokenizer.eod,
        pad_id=tokenizer.pad,
        row_ids=row_ids,
        vocab_size=tokenizer.vocab_size,
    ):
        ends = config.stop_at_eod and token == tokenizer.eod
        yield index, token, "" if ends else streams[index].push(token)

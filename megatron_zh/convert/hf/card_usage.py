"""The model card's "How to use" section: the generation call that works with the exported tokenizer files
(transformers 5.24, measured; see exporter.py), and the text normalisation a model's inputs need."""

from __future__ import annotations

USAGE_PROMPT = "这是很久之前的事情了"
USAGE_MAX_LENGTH = 100  # the published model's usage line; less for a model with fewer positions
PIPELINE_DEFAULT_NEW_TOKENS = 256  # what TextGenerationPipeline generates when the call gives no length


def usage_calls(positions: int) -> tuple[str, str, int]:
    """(the card's pipeline call, the call that gives a BertTokenizer the same input, its max_length): the second
    frames the prompt `[CLS] prompt` although BertTokenizer always appends [SEP] (transformers 5.24), and the
    pipeline adds its prefix to max_length, so both fit in `positions`."""
    length = min(USAGE_MAX_LENGTH, positions - 1)
    call = f'text_generator("{USAGE_PROMPT}", max_length={length}, do_sample=True'
    return call + ")", call + ', add_special_tokens=False, prefix="[CLS]")', length


def usage_lines(model_name: str, positions: int) -> list[str]:
    """How to generate with transformers (5.24), and what does not work: measured, see exporter.py."""
    usage_call, bert_call, length = usage_calls(positions)
    return [
        "## How to use",
        "",
        "```python",
        "from transformers import AutoTokenizer, GPT2LMHeadModel, TextGenerationPipeline",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{model_name}")',
        f'model = GPT2LMHeadModel.from_pretrained("{model_name}")',
        "text_generator = TextGenerationPipeline(model, tokenizer)",
        usage_call,
        "```",
        "",
        "The model sees the prompt as `[CLS] prompt`: training framed every document `[CLS] text [SEP]`, so a "
        'prompt is the start of one. `AutoTokenizer` (also what `pipeline("text-generation", model=...)` loads) '
        "reads this folder's tokenizer.json as written: `tokenizer(text)` gives `[CLS] text` with no `[SEP]`; "
        "append `[SEP]` to score whole documents as training saw them.",
        "",
        "`BertTokenizer.from_pretrained` (transformers 5.24) always frames one text `[CLS] text [SEP]`, whatever the "
        "files say, so with it the call above continues after an end of document. With a `BertTokenizer`, call "
        f"`{bert_call}` (the pipeline counts the prefix in max_length: {length + 1} tokens in all).",
        "",
        "generation_config.json sets no length: pass `max_length` (prompt included) or `max_new_tokens`. Without "
        f"either the pipeline generates {PIPELINE_DEFAULT_NEW_TOKENS} new tokens, and prompt and continuation must "
        f"fit in the model's {positions:,} positions.",
        "",
    ]


def normalization_lines(normalization: str) -> list[str]:
    if normalization == "none":
        return []
    return [
        f"Text normalisation: the training data was normalised before tokenizing ({normalization}): characters "
        "the vocabulary lacks became equivalents it has (curly quotes to straight ones, dashes to '-', '…' to "
        "'...'). The tokenizer files apply the same mapping; load them with `AutoTokenizer` (`BertTokenizer` "
        "does not apply it).",
        "",
    ]

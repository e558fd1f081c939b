"""Checkpoint -> Hugging Face folder (GPT2LMHeadModel + BertTokenizer), verified before it appears.

The folder is built beside --output and renamed into place only after the self-check: it is
loaded back with `transformers` (offline), its tokenizer must give our token ids, its weights
must be ours bit for bit, and its logits on a batch of real text must match ours in fp32.
README.md is the model card (model_card.py: every number from the checkpoint's files).

The folder is also made for TextGenerationPipeline, which hands the model whatever its tokenizer
adds around a prompt (transformers 5.24): AutoTokenizer frames a prompt `[CLS] prompt`, the start of
a document as training framed them, and generation_config.json sets no length, so the caller's
max_length or max_new_tokens holds (`make_prompts_start_documents`, checked by `check_generation_files`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from megatron_zh.checkpoint.weights import LoadedCheckpoint, checkpoint_tokenizer
from megatron_zh.convert.hf.model_card import write_model_card
from megatron_zh.convert.hf.names import (
    EXPORT_INFO_FILE,
    HF_LM_HEAD,
    from_hf_config,
    from_hf_state_dict,
    to_hf_config,
    to_hf_state_dict,
)
from megatron_zh.errors import CheckpointError, ConfigError
from megatron_zh.fileio import commit_directory, read_json_object, staging_directory
from megatron_zh.knobs import knob
from megatron_zh.log import get_logger
from megatron_zh.model.config import GPT2Config
from megatron_zh.model.gpt2 import model_from_state_dict
from megatron_zh.paths import refuse_overlap
from megatron_zh.text.tokenizer import CLS, SEP, SPECIAL_TOKENS, BertChineseTokenizer

if TYPE_CHECKING:
    from transformers import GPT2Config as HFGPT2Config
    from transformers import GPT2LMHeadModel

logger = get_logger(__name__)

LOGIT_TOLERANCE = 1e-4  # fp32, both models on CPU
# Real text of the kinds the corpus holds (news, reviews, dialogue), with the cases lower-casing,
# digits, Latin words and full-width punctuation exercise.
SELF_CHECK_TEXTS = (
    "北京时间今天凌晨，国际足联公布了最新一期世界排名，中国男足位列第77位，与上期相比上升了3位。",
    "这家店的菜味道不错，服务员态度也很好，就是周末人太多了，等了将近一个小时才有位置。",
    "我昨天刚买的iPhone，用了不到一天屏幕就出现了问题，客服说可以在7天内无理由退货。",
    "“你明天有空吗？”“有啊，怎么了？”“我们一起去图书馆复习吧，下周就要考试了！”",
    "The GPT-2 model was trained on CLUECorpusSmall with a BERT-Chinese vocabulary of 21128 tokens.",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
)
SELF_CHECK_ROWS = 4
SELF_CHECK_MAX_LENGTH = 128
# The class name that makes AutoTokenizer build the tokenizer from tokenizer.json as written: an alias of
# TokenizersBackend in transformers 5, the fast-tokenizer class of that name in 4. With "BertTokenizer" there,
# BertTokenizer.__init__ rebuilds BERT's "[CLS] text [SEP]" whatever tokenizer.json says.
GENERIC_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# A length in generation_config.json beats the caller's: a written max_new_tokens overrides a pipeline call's
# max_length (with a warning), a written max_length makes every call's max_new_tokens warn. So none is written.
LENGTH_KEYS = ("max_new_tokens", "max_length")


@dataclass(frozen=True)
class ExportResult:
    output: Path
    checkpoint: str  # DIR/TAG
    iteration: int
    weights_source: str
    vocab_fingerprint: str
    normalization: str  # the text normalisation its tokenizer.json applies ("none": BERT-Chinese's own only)
    max_logit_diff: float
    self_check_tokens: int


@dataclass(frozen=True)
class HFExportOptions:
    vocab_file: str | None = knob(
        None, help="vocab.txt (default: the run's; must be the vocab it was trained with)", metavar="VOCAB.txt"
    )


def write_hf_export(loaded: LoadedCheckpoint, output: Path, overwrite: bool, options: dict[str, Any]) -> ExportResult:
    """Write a checkpoint's weights as a Hugging Face folder at `output` (options: HFExportOptions' keys, and
    "command", the command line the model card quotes)."""
    tokenizer = checkpoint_tokenizer(loaded, options.get("vocab_file"))
    refuse_overlap(output, [("the checkpoint's vocab", tokenizer.vocab_file)])
    hf_config = _hf_config(loaded.model_config, tokenizer)
    with staging_directory(output, overwrite=overwrite) as staging:
        write_hf_folder(staging, loaded, tokenizer, hf_config)
        max_diff, tokens = self_check(staging, loaded, tokenizer)
        result = ExportResult(
            output=output,
            checkpoint=str(loaded.directory / loaded.tag),
            iteration=loaded.client_state.iteration,
            weights_source=loaded.weights_source,
            vocab_fingerprint=tokenizer.fingerprint,
            normalization=tokenizer.normalization.identity,
            max_logit_diff=max_diff,
            self_check_tokens=tokens,
        )
        export = {**asdict(result), "command": options.get("command", "")}
        write_model_card(staging, loaded, model_name=output.name, export=export)
        (staging / EXPORT_INFO_FILE).write_text(
            json.dumps({**asdict(result), "output": str(output), "logit_tolerance": LOGIT_TOLERANCE}, indent=2) + "\n",
            encoding="utf-8",
        )
        commit_directory(staging, output)
    logger.info(
        "exported %s (%s) to %s; self-check max |logit diff| %.3g",
        result.checkpoint,
        result.weights_source,
        output,
        max_diff,
    )
    return result


def _hf_config(config: GPT2Config, tokenizer: BertChineseTokenizer) -> HFGPT2Config:
    """GPT-2 config with the tokenizer's own [CLS]/[SEP]/[PAD] ids; ConfigError if it does not map back."""
    hf_config = to_hf_config(config, bos_token_id=tokenizer.cls, eos_token_id=tokenizer.sep, pad_token_id=tokenizer.pad)
    back = from_hf_config(
        hf_config, attention_impl=config.attention_impl, activation_checkpointing=config.activation_checkpointing
    )
    if back != config:
        changed = {k: (v, getattr(back, k)) for k, v in config.to_dict().items() if getattr(back, k) != v}
        raise ConfigError(f"the model config does not map to a Hugging Face GPT-2 config: {changed}")
    return hf_config


def write_hf_folder(
    folder: Path, loaded: LoadedCheckpoint, tokenizer: BertChineseTokenizer, hf_config: HFGPT2Config
) -> None:
    """config.json, model.safetensors, generation_config.json and the BertTokenizer files."""
    from safetensors.torch import save_file
    from transformers import BertTokenizer, GenerationConfig

    hf_config.save_pretrained(folder)
    weights = to_hf_state_dict(loaded.state_dict, loaded.model_config)
    # The LM head is the word embedding (tie_word_embeddings); safetensors stores each tensor once.
    weights.pop(HF_LM_HEAD)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "model.safetensors").chmod((folder / "config.json").stat().st_mode)  # not save_file's 0600

    shutil.copyfile(tokenizer.vocab_file, folder / "vocab.txt")  # byte for byte the training vocab
    # Lower-case as training did (the published model's do_lower_case=false disagrees with its training).
    # GPT-2 adds wte(token_type_ids) to its input when given them, so the tokenizer must not produce
    # BERT's token_type_ids (model_input_names, as GPT2Tokenizer has).
    BertTokenizer(
        str(folder / "vocab.txt"),
        do_lower_case=True,
        model_max_length=loaded.model_config.max_position_embeddings,
        model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(folder)
    if tokenizer.normalization.enabled:
        write_normalizing_tokenizer(folder, tokenizer)
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(dict(zip(names, SPECIAL_TOKENS)), indent=2) + "\n", encoding="utf-8"
    )
    make_prompts_start_documents(folder)
    GenerationConfig(  # no length (LENGTH_KEYS): the caller's max_length or max_new_tokens holds
        bos_token_id=tokenizer.cls,
        eos_token_id=tokenizer.sep,
        pad_token_id=tokenizer.pad,
        do_sample=True,
        top_k=50,
        top_p=0.95,
        temperature=1.0,
        repetition_penalty=1.0,
    ).save_pretrained(folder)


def make_prompts_start_documents(folder: Path) -> None:
    """Rewrite the saved BertTokenizer files so that AutoTokenizer frames one text `[CLS] text`.

    Training framed documents `[CLS] tokens [SEP]`: a prompt is a document's start, and a `[SEP]` after it
    would make the model continue after an end of document. tokenizer.json's single-text template loses its
    `[SEP]` (a pair keeps BERT's); tokenizer_config.json names GENERIC_TOKENIZER_CLASS so AutoTokenizer uses
    that template. BertTokenizer.from_pretrained still gives `[CLS] text [SEP]`: no file can change it.
    """
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    backend.save(str(folder / "tokenizer.json"))
    config = read_json_object(folder / "tokenizer_config.json", CheckpointError)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": GENERIC_TOKENIZER_CLASS}, indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )


def check_generation_files(folder: Path, tokenizer: BertChineseTokenizer) -> None:
    """CheckpointError unless, loaded offline from `folder`, AutoTokenizer frames the self-check texts `[CLS] ids`
    (what TextGenerationPipeline feeds the model), BertTokenizer `[CLS] ids [SEP]`, neither adds token_type_ids,
    and generation_config.json sets no length. BertTokenizer rebuilds BERT's normaliser from its options, so it
    applies no text normalisation: its ids are checked against the un-normalised encoding."""
    from transformers import AutoTokenizer, BertTokenizer, GenerationConfig

    auto = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    bert = BertTokenizer.from_pretrained(folder, local_files_only=True)
    plain = BertChineseTokenizer(tokenizer.vocab_file, lower_case=tokenizer.lower_case)
    texts = list(SELF_CHECK_TEXTS)
    for text, ids, plain_ids in zip(texts, tokenizer.encode_batch(texts), plain.encode_batch(texts), strict=True):
        framings = {
            f"AutoTokenizer ({type(auto).__name__})": (auto(text), [tokenizer.cls, *ids]),
            "BertTokenizer": (bert(text), [tokenizer.cls, *plain_ids, tokenizer.sep]),
        }
        for name, (encoded, expected) in framings.items():
            if encoded["input_ids"] != expected or set(encoded) != {"input_ids", "attention_mask"}:
                raise CheckpointError(
                    f"self-check failed: the exported {name} gives {dict(encoded)} for {text!r}; "
                    f"expected input_ids {expected} and attention_mask only"
                )
    written = set(LENGTH_KEYS) & set(GenerationConfig.from_pretrained(folder, local_files_only=True).to_diff_dict())
    if written:
        raise CheckpointError(f"self-check failed: generation_config.json sets {sorted(written)}")


def write_normalizing_tokenizer(folder: Path, tokenizer: BertChineseTokenizer) -> None:
    """Make the folder's tokenizer.json apply the training data's text normalisation: its mapping as `tokenizers`
    Replace steps before BERT's normaliser. Only a tokenizer class that reads tokenizer.json as it is applies it
    (BertTokenizer rebuilds its normaliser from its options): make_prompts_start_documents names that class."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    backend.normalizer = tokenizer.normalization.tokenizers_normalizer(backend.normalizer)
    backend.save(str(folder / "tokenizer.json"))


def self_check_batch(tokenizer: BertChineseTokenizer, max_positions: int) -> torch.Tensor:
    """[rows, length] token ids: the sample texts framed [CLS] text [SEP] and packed, as in training."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch(list(SELF_CHECK_TEXTS)):
        stream += [tokenizer.cls, *ids, tokenizer.sep]
    length = min(SELF_CHECK_MAX_LENGTH, max_positions)
    needed = SELF_CHECK_ROWS * length
    stream = (stream * (needed // len(stream) + 1))[:needed]
    return torch.tensor(stream, dtype=torch.long).view(SELF_CHECK_ROWS, length)


def self_check(folder: Path, loaded: LoadedCheckpoint, tokenizer: BertChineseTokenizer) -> tuple[float, int]:
    """Load `folder` with transformers offline and compare it with our model. Returns (max |logit diff|, tokens)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)  # what users load
    ours_ids = tokenizer.encode_batch(list(SELF_CHECK_TEXTS))
    hf_ids = [hf_tokenizer(text, add_special_tokens=False)["input_ids"] for text in SELF_CHECK_TEXTS]
    if hf_ids != ours_ids:
        bad = next(i for i, (a, b) in enumerate(zip(ours_ids, hf_ids)) if a != b)
        raise CheckpointError(
            f"self-check failed: the exported tokenizer gives {hf_ids[bad][:12]}... for "
            f"{SELF_CHECK_TEXTS[bad]!r}, training gave {ours_ids[bad][:12]}..."
        )

    # output_loading_info=True makes it return (model, info); transformers' annotation names the model only.
    hf_model, info = cast(
        "tuple[GPT2LMHeadModel, dict[str, list[str]]]",
        GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32, output_loading_info=True),
    )
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise CheckpointError(f"self-check failed: transformers loaded the export with {problems}")
    hf_model.eval()
    reloaded = from_hf_state_dict(hf_model.state_dict(), loaded.model_config)
    changed = [name for name, tensor in loaded.state_dict.items() if not torch.equal(tensor, reloaded[name])]
    if changed:
        raise CheckpointError(f"self-check failed: transformers holds different values for {changed[:6]}")

    ours = model_from_state_dict(loaded.model_config, loaded.state_dict)
    batch = self_check_batch(tokenizer, loaded.model_config.max_position_embeddings)
    check_generation_files(folder, tokenizer)
    # Also exactly what AutoTokenizer hands the model (a pipeline's input), special tokens and all.
    encoded = AutoTokenizer.from_pretrained(folder, local_files_only=True)(SELF_CHECK_TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        max_diff = max(
            (ours(batch).logits - hf_model(input_ids=batch).logits).abs().max().item(),
            (ours(encoded["input_ids"]).logits - hf_model(**encoded).logits).abs().max().item(),
        )
    if not max_diff <= LOGIT_TOLERANCE:  # also catches NaN
        raise CheckpointError(
            f"self-check failed: the exported model's logits differ from ours by up to "
            f"{max_diff:.3g} (tolerance {LOGIT_TOLERANCE:g}, fp32); nothing was written"
        )
    logger.info(
        "self-check passed: %d x %d tokens, max |logit diff| %.3g (tolerance %g)",
        *batch.shape,
        max_diff,
        LOGIT_TOLERANCE,
    )
    return max_diff, batch.numel() + encoded["input_ids"].numel()


def report_hf_export(result: ExportResult) -> list[str]:
    return [
        f"exported {result.checkpoint} (iteration {result.iteration}, weights: {result.weights_source})",
        f"self-check: max |logit diff| = {result.max_logit_diff:.3g} over {result.self_check_tokens} tokens "
        f"(fp32, tolerance {LOGIT_TOLERANCE:g})",
        f"wrote {result.output}: load it with GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained "
        "(its README.md shows how)",
    ]

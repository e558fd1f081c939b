"""Shared fixtures: the real vocab and corpus, found through MEGATRON_ZH_DATA_DIR (CI sets it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT

# Kernels run under Triton's interpreter in tests: these machines have no GPU. Must be set before
# anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

DATA_DIR = Path(os.environ.get("MEGATRON_ZH_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


def _shared_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        message = f"{path} is missing; set MEGATRON_ZH_DATA_DIR to the folder holding {name}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def zh_vocab_file() -> Path:
    """The real BERT-Chinese vocab (21128 tokens)."""
    return _shared_file("google_zh_vocab.txt")


@pytest.fixture(scope="session")
def zh_corpus_file() -> Path:
    """2,500 real CLUECorpusSmall documents, one per line."""
    return _shared_file("CLUECorpusSmall_sampled.txt")


@pytest.fixture(scope="session")
def uer_distil_config_file() -> Path:
    """UER-py's own models/gpt2/distil_config.json, the config the published distil model was trained with."""
    return _shared_file("uer_gpt2_distil_config.json")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def zh_text_document(tmp_path_factory, zh_corpus_file, zh_vocab_file) -> dict[str, str]:
    """The real sampled corpus tokenized once with the real vocab, in this process (the tool is a thin shell
    over the same call, tested as a command in tests/unit/data/test_preprocess.py):
    {"prefix": .../clue_text_document (the .bin/.idx prefix), "vocab": the vocab file}."""
    from megatron_zh.data.preprocess.config import PreprocessConfig
    from megatron_zh.data.preprocess.pipeline import preprocess

    out = tmp_path_factory.mktemp("zh_text_document")
    config = PreprocessConfig(
        inputs=(str(zh_corpus_file),), output_prefix=str(out / "clue"), vocab_file=str(zh_vocab_file), progress=False
    )
    preprocess(config)
    return {"prefix": str(out / "clue_text_document"), "vocab": str(zh_vocab_file)}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, zh_text_document) -> dict:
    """A committed checkpoint of `deepspeed --num_gpus 2 pretrain_gpt.py --ds_config ds_configs/cpu_tiny.json`
    (ZeRO-1, gpt2-tiny, fp32) after 8 steps on the real corpus: {"save": Path, "vocab": str, "prefix": str}."""
    from training_runs import pretrain_args, run

    save = tmp_path_factory.mktemp("tiny_checkpoint") / "checkpoints"
    run(
        pretrain_args(
            zh_text_document, save, train_iters=8, save_interval=8, eval_interval=0, eval_iters=1, log_interval=4
        )
    )
    return {"save": save, "vocab": zh_text_document["vocab"], "prefix": zh_text_document["prefix"]}


@pytest.fixture(scope="session")
def bf16_checkpoint(zh_text_document, tmp_path_factory) -> Path:
    """3 ranks, bf16 with fp32 gradient accumulation under ZeRO-1 (DeepSpeed's BF16_Optimizer layout:
    fp32 masters in bf16_zero_pp_rank_* files, alignment padding on the last rank), 3 steps."""
    from training_runs import bf16_pretrain_args, run

    save = tmp_path_factory.mktemp("bf16") / "checkpoints"
    run(
        bf16_pretrain_args(
            zh_text_document,
            save,
            train_iters=3,
            lr_warmup_iters=1,
            save_interval=3,
            eval_interval=0,
            eval_iters=1,
            global_batch_size=12,
            micro_batch_size=4,
        ),
        ranks=3,
    )
    return save


def _deepspeed_shm_buffers() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("deepspeed_allreduce_buffer_*")} if shm.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_shared_memory():
    """Every run the suite starts must leave /dev/shm as it found it: DeepSpeed's CPU all-reduce buffers
    (66 MB a rank) are not freed by DeepSpeed itself, and a suite that leaks them exhausts the machine's RAM.
    Session-wide, so that runs made by session fixtures count too."""
    before = _deepspeed_shm_buffers()
    yield
    leaked = sorted(_deepspeed_shm_buffers() - before)
    assert not leaked, f"shared-memory all-reduce buffers left in /dev/shm: {leaked}"


# Fixtures that start DeepSpeed runs: a test that uses one (directly or through another fixture) is integration.
DEEPSPEED_FIXTURES = {"tiny_checkpoint", "bf16_checkpoint"}
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration, and every test of a DeepSpeed-run fixture, is marked integration."""
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents or DEEPSPEED_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request, monkeypatch):
    """A test without the integration marker may not start a process: `make test-fast` (-m "not integration")
    is fast because of this rule, and the rule is checked, not hoped for."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    import subprocess

    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({str(args)[:80]}): mark it @pytest.mark.integration "
            "or move it to tests/integration/"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield

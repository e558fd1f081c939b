"""One short training run through pretrain_gpt.py, as a user starts it: does the loss fall?

    python bench/short_run.py                 # GPU: gpt2-distil, bf16, stage-1 shape (seq 128), 60 steps
    python bench/short_run.py --cpu-dry-run   # CPU: gpt2-tiny, fp32, a few steps (checks the script)

The run is one process on one device with the default `--kernels auto` (so its start-up kernel
self-check runs), saving into a new folder under runs/bench/short_run/. Data (--data): the
CLUECorpusSmall sample under MEGATRON_ZH_DATA_DIR (or ../shared/data), tokenized once into
runs/bench/data/; without it ("auto") or with --data synthetic, a synthetic corpus made here:
2-character "words" over 500 CJK characters, each word followed by one of 5 others, with a WordPiece
vocab built on it by tools/build_vocab.py. It is learnable, so the loss falls on it as on text.

Prints the run's kernels line, the losses, tokens/s and MFU from its metrics.jsonl, and `summary: {json}`;
exits 1 when the loss did not fall (the mean of the last 5 logged losses must be at least 1.0 below the
first), or with the run's own exit status when the run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEGATRON_ZH_DATA_DIR", REPO.parent / "shared" / "data"))
WORK = REPO / "runs" / "bench"
MIN_DROP = 1.0
GPU_FLAGS = dict(
    ds_config="ds_configs/stage1.json",
    model="gpt2-distil",
    seq_length=128,
    micro_batch_size=32,
    global_batch_size=32,
    train_iters=60,
    lr=5e-4,
    lr_warmup_iters=5,
    log_interval=5,
)
DRY_RUN_FLAGS = dict(
    ds_config="ds_configs/cpu_tiny.json",
    model="gpt2-tiny",
    seq_length=32,
    micro_batch_size=4,
    global_batch_size=4,
    train_iters=12,
    lr=2e-3,
    lr_warmup_iters=2,
    log_interval=1,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-dry-run", action="store_true", help="gpt2-tiny, fp32, on CPU")
    p.add_argument("--data", choices=("auto", "corpus", "synthetic"), default="auto")
    p.add_argument("--extra", default="", help="more pretrain_gpt.py flags, e.g. '--compile'")
    return p.parse_args(argv)


def tool(name: str, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *args], check=True, cwd=REPO)


def corpus_data() -> tuple[str, str] | None:
    """(prefix, vocab) of the CLUECorpusSmall sample, tokenized once; None when it is not there."""
    corpus, vocab = DATA_DIR / "CLUECorpusSmall_sampled.txt", DATA_DIR / "google_zh_vocab.txt"
    if not (corpus.is_file() and vocab.is_file()):
        return None
    prefix = WORK / "data" / "clue_sampled"
    if not Path(f"{prefix}_text_document.idx").is_file():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        tool("preprocess_data", "--input", str(corpus), "--output-prefix", str(prefix), "--vocab-file", str(vocab))
    return f"{prefix}_text_document", str(vocab)


def synthetic_data() -> tuple[str, str]:
    """(prefix, vocab) of the synthetic corpus (module docstring), made once."""
    folder = WORK / "synthetic"
    prefix, vocab, text = folder / "markov", folder / "vocab.txt", folder / "markov.txt"
    if Path(f"{prefix}_text_document.idx").is_file():
        return f"{prefix}_text_document", str(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    characters = [chr(0x4E00 + 7 * i) for i in range(500)]
    words = ["".join(rng.sample(characters, 2)) for _ in range(300)]
    followers = {word: rng.sample(words, 5) for word in words}
    lines = []
    for _ in range(4000):
        word, out = rng.choice(words), []
        for _ in range(rng.randint(20, 60)):
            out.append(word)
            word = rng.choice(followers[word])
        lines.append("".join(out) + "。")
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tool("build_vocab", "--input", str(text), "--output", str(vocab), "--vocab-size", "2000")
    tool("preprocess_data", "--input", str(text), "--output-prefix", str(prefix), "--vocab-file", str(vocab))
    return f"{prefix}_text_document", str(vocab)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    found = corpus_data() if args.data in ("auto", "corpus") else None
    if found is None and args.data == "corpus":
        print(f"short_run.py: no CLUECorpusSmall sample under {DATA_DIR} (MEGATRON_ZH_DATA_DIR)", file=sys.stderr)
        return 2
    data_name = "CLUECorpusSmall sample" if found else "synthetic corpus (no CLUECorpusSmall sample found)"
    prefix, vocab = found or synthetic_data()
    (WORK / "short_run").mkdir(parents=True, exist_ok=True)
    save = Path(tempfile.mkdtemp(prefix="run-", dir=WORK / "short_run"))
    flags = DRY_RUN_FLAGS if args.cpu_dry_run else GPU_FLAGS
    command = [sys.executable, "pretrain_gpt.py"]
    for name, value in {**flags, "data_path": prefix, "vocab_file": vocab, "save": save, "load": save}.items():
        command += [f"--{name.replace('_', '-')}" if name != "ds_config" else "--ds_config", str(value)]
    command += ["--split", "98,2,0", "--eval-interval", "0", "--eval-iters", "2", "--num-workers", "2"]
    command += args.extra.split()
    print(f"data: {data_name}\n$ {' '.join(command)}", flush=True)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # a CPU dry run runs PyTorch code, as on a user's CPU machine
    status = subprocess.run(command, cwd=REPO, env=env).returncode
    if status != 0:
        print(f"short_run.py: pretrain_gpt.py exited with status {status}", file=sys.stderr)
        return status

    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    setup = next(r for r in records if r["kind"] == "setup")
    losses = [r["loss"] for r in train]
    last = statistics.mean(losses[-5:])
    fell = last <= losses[0] - MIN_DROP
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in train[1:] or train)
    mfu = statistics.median(r["mfu"] for r in train[1:] or train) if train[-1]["mfu"] is not None else None
    summary = {
        "data": data_name,
        "save": str(save),
        "steps": train[-1]["iteration"],
        "first_loss": round(losses[0], 4),
        "last5_loss": round(last, 4),
        "loss_fell": fell,
        "tokens_per_s_median": round(tokens_per_s, 1),
        "mfu_median": None if mfu is None else round(mfu, 4),
        "kernels": setup["kernels"]["ops"],
        "self_check": {op: check["score"] for op, check in setup["kernels"]["self_check"].items()},
        "compile": setup["compile"],
    }
    print(f"losses: {', '.join(f'{x:.3f}' for x in losses)}")
    print(f"loss {losses[0]:.3f} -> {last:.3f} (mean of the last 5): {'fell' if fell else 'DID NOT FALL'}")
    print("summary: " + json.dumps(summary), flush=True)
    return 0 if fell else 1


if __name__ == "__main__":
    sys.exit(main())

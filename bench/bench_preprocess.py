"""Preprocessing throughput: tools/preprocess_data.py's pipeline against the tokenizer alone, same run, same cores.

  python bench/bench_preprocess.py                 # 2 workers, a >= 40 MB corpus, 3 repeats
  python bench/bench_preprocess.py --workers 1 --min-mb 10 --repeats 1

The corpus is CLUECorpusSmall_sampled.txt (from MEGATRON_ZH_DATA_DIR, default ../shared/data)
repeated to at least --min-mb in a temporary directory. Printed per repeat:

  bound (tokenizers)   stock `tokenizers` batch encoding (the transformers.BertTokenizer pipeline,
                       encode_batch_fast) of the same lines, N processes, one core each: the brief's bound
  bound (ours)         our tokenizer alone (BertChineseTokenizer.encode_batch_flat), N processes
  preprocess           the whole of megatron_zh.data.preprocess with N workers: reading, tokenizing,
                       framing, writing .bin/.idx/.meta.json, pool start-up included

and the ratios preprocess / each bound. For reference (not measured here): Megatron-LM's own
preprocess_data.py with its BERT WordPiece tokenizer processes about 0.7 M tokens/s with 2 workers
on a 2-core machine; the target is >= 85% of the `tokenizers` bound and >= 1.6 M tokens/s.

  python bench/bench_preprocess.py --against ../main --min-mb 20 --repeats 7   # this tree against another
  python bench/bench_preprocess.py --against ../main --normalize punctuation   # ... with a normalisation on

--against DIR preprocesses the same corpus with the package of another checkout (the baseline, e.g. before
a change) and with this one, each in a fresh process, alternating, and prints the ratio of their CPU
seconds (main process and workers; on a loaded machine wall time swings far more than the change) and
of their wall seconds, per repeat and the median. --normalize applies to this tree's runs only.

  python bench/bench_preprocess.py --compressed --size-mb 200   # compressed inputs against plain text

--compressed builds a CLUECorpusSmall-shaped corpus from the sample instead (documents of one sentence
per line, separated by blank lines; read with --document-boundary blank-line) as plain text, .txt.gz,
.txt.zst and CLUECorpusSmall's four zips of many member files (news2016zh_corpus.zip, ...), the zips
--size-mb in all (the text is about twice that), and preprocesses each in a fresh process, in turn
within each repeat. It prints tokens/s of each, the ratio compressed / plain tokens/s (target >= 0.75),
and the peak RSS of the main process and of the largest worker.

  python bench/bench_preprocess.py --jsonl --size-mb 40 --repeats 5   # the duplicate-key check on JSON lines

--jsonl writes the sample's documents as JSON-lines records and preprocesses them with the duplicate-key
check (fileio.loads_json) against plain json.loads, in turn within each repeat, and prints the ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEGATRON_ZH_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
MEGATRON_LM_TOKENS_PER_S = 0.7e6  # reference figure from the brief, 2 workers, same kind of machine


def build_corpus(directory: Path, min_mb: float) -> Path:
    source = (DATA_DIR / "CLUECorpusSmall_sampled.txt").read_bytes()
    copies = max(1, int(-(-min_mb * 1e6 // len(source))))
    path = directory / "corpus.txt"
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(source if source.endswith(b"\n") else source + b"\n")
    return path


def _encode_share(kind: str, vocab: str, lines: list[str], barrier, queue) -> None:
    """One process of a bound: encode its share of the lines in ~1 MB batches, timed from a common start."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from megatron_zh.text.tokenizer import BertChineseTokenizer, build_backend

    batches, batch, size = [], [], 0
    for line in lines:
        batch.append(line)
        size += len(line) * 3
        if size >= 1 << 20:
            batches.append(batch)
            batch, size = [], 0
    batches.append(batch)
    if kind == "tokenizers":
        backend = build_backend(vocab)

        def encode(texts: list[str]) -> int:
            return sum(len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))

    else:
        tokenizer = BertChineseTokenizer(vocab)
        tokenizer.encode("warm up")  # builds its separator table: start-up, not throughput

        def encode(texts: list[str]) -> int:
            return int(tokenizer.encode_batch_flat(texts)[1].sum())

    barrier.wait()
    start = time.perf_counter()
    tokens = sum(encode(b) for b in batches)
    queue.put((tokens, time.perf_counter() - start))


def measure_bound(kind: str, vocab: Path, corpus: Path, processes: int) -> tuple[int, float]:
    lines = [line for line in corpus.read_text(encoding="utf-8").split("\n") if line.strip()]
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(processes), context.Queue()
    share = -(-len(lines) // processes)
    workers = [
        context.Process(
            target=_encode_share, args=(kind, str(vocab), lines[i * share : (i + 1) * share], barrier, queue)
        )
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return sum(t for t, _ in results), max(s for _, s in results)


def measure_preprocess(vocab: Path, corpus: Path, workers: int, out_dir: Path) -> tuple[int, float]:
    from megatron_zh.data.preprocess.config import PreprocessConfig
    from megatron_zh.data.preprocess.pipeline import preprocess

    start = time.perf_counter()
    stats = preprocess(
        PreprocessConfig(
            inputs=[str(corpus)],
            output_prefix=str(out_dir / "bench"),
            vocab_file=str(vocab),
            workers=workers,
            progress=False,
            overwrite=True,  # each repeat replaces the last one's dataset
        )
    )
    return stats.tokens["text"], time.perf_counter() - start


# What each side of --against runs: the preprocessing library of the tree on PYTHONPATH, nothing else.
_PREPROCESS_ONE = """
import sys
from megatron_zh.data.preprocess.config import PreprocessConfig
from megatron_zh.data.preprocess.pipeline import preprocess
corpus, vocab, prefix, workers, normalize = sys.argv[1:6]
extra = {} if normalize == "none" else {"normalize": normalize}
stats = preprocess(PreprocessConfig(inputs=[corpus], output_prefix=prefix, vocab_file=vocab,
                                    workers=int(workers), progress=False, **extra))
print(stats.tokens["text"])
"""


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process and the workers it waited for
    return usage.ru_utime + usage.ru_stime


def measure_tree(tree: Path, vocab: Path, corpus: Path, workers: int, out_dir: Path, normalize: str):
    """(tokens, CPU seconds, wall seconds) of one preprocessing run with `tree`'s package, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu, start = _cpu_of_children(), time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _PREPROCESS_ONE, str(corpus), str(vocab), str(out_dir / "x"), str(workers), normalize],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.split()[-1]), _cpu_of_children() - cpu, time.perf_counter() - start


def run_against(baseline: Path, vocab: Path, min_mb: float, workers: int, repeats: int, normalize: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp), min_mb)
        print(
            f"corpus: {corpus.stat().st_size / 1e6:.1f} MB, {workers} worker(s); baseline {baseline}, "
            f"this tree {REPO} (--normalize {normalize})"
        )
        cpu_ratios, wall_ratios = [], []
        for repeat in range(1, repeats + 1):
            base_tokens, base_cpu, base_wall = measure_tree(baseline, vocab, corpus, workers, Path(tmp), "none")
            tokens, cpu, wall = measure_tree(REPO, vocab, corpus, workers, Path(tmp), normalize)
            cpu_ratios.append(cpu / base_cpu)
            wall_ratios.append(wall / base_wall)
            print(
                f"repeat {repeat}: baseline {base_tokens:,} tokens, {base_cpu:.2f} CPU s, {base_wall:.2f} s | "
                f"this tree {tokens:,} tokens, {cpu:.2f} CPU s, {wall:.2f} s | "
                f"ratio CPU {cpu_ratios[-1]:.3f}, wall {wall_ratios[-1]:.3f}"
            )
        print(
            f"median of {repeats}: this tree / baseline = {statistics.median(cpu_ratios):.3f} CPU, "
            f"{statistics.median(wall_ratios):.3f} wall"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-mb", "--size-mb", dest="min_mb", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compressed", action="store_true", help="compressed inputs against the same plain text")
    parser.add_argument("--jsonl", action="store_true", help="JSON lines: the duplicate-key check against json.loads")
    parser.add_argument("--against", type=Path, help="another checkout whose package is the baseline")
    parser.add_argument("--normalize", default="none", help="with --against: this tree's --normalize")
    args = parser.parse_args()
    vocab = DATA_DIR / "google_zh_vocab.txt"
    for path in (vocab, DATA_DIR / "CLUECorpusSmall_sampled.txt"):
        if not path.is_file():
            sys.exit(f"{path} is missing: set MEGATRON_ZH_DATA_DIR to the folder with the real vocab and corpus")
    import logging

    logging.getLogger("megatron_zh").setLevel(logging.WARNING)
    if args.compressed:
        from preprocess_compressed import run_compressed  # bench/preprocess_compressed.py

        run_compressed(
            vocab, DATA_DIR / "CLUECorpusSmall_sampled.txt", args.min_mb or 200.0, args.workers, args.repeats
        )
        return
    if args.jsonl:
        from preprocess_jsonl import run_jsonl  # bench/preprocess_jsonl.py

        run_jsonl(vocab, DATA_DIR / "CLUECorpusSmall_sampled.txt", args.min_mb or 40.0, args.workers, args.repeats)
    if args.against is not None:
        run_against(args.against.resolve(), vocab, args.min_mb or 20.0, args.workers, args.repeats, args.normalize)
        return
    args.min_mb = args.min_mb or 40.0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp), args.min_mb)
        megabytes = corpus.stat().st_size / 1e6
        print(
            f"corpus: {megabytes:.1f} MB "
            f"({corpus.stat().st_size / (DATA_DIR / 'CLUECorpusSmall_sampled.txt').stat().st_size:.0f}"
            f" copies of CLUECorpusSmall_sampled.txt), {args.workers} worker(s), {os.cpu_count()} CPU(s)"
        )
        rows = []
        for repeat in range(1, args.repeats + 1):
            stock_tokens, stock_s = measure_bound("tokenizers", vocab, corpus, args.workers)
            ours_tokens, ours_s = measure_bound("ours", vocab, corpus, args.workers)
            tokens, seconds = measure_preprocess(vocab, corpus, args.workers, Path(tmp))
            assert ours_tokens == stock_tokens, "our tokenizer and `tokenizers` disagree on the token count"
            stock, alone, full = stock_tokens / stock_s, ours_tokens / ours_s, tokens / seconds
            rows.append((stock, alone, full))
            print(
                f"repeat {repeat}: bound (tokenizers) {stock / 1e6:5.2f} M tokens/s | bound (ours) {alone / 1e6:5.2f} M"
                f" tokens/s | preprocess {full / 1e6:5.2f} M tokens/s ({megabytes / seconds:.1f} MB/s, {seconds:.2f} s)"
                f" | preprocess / tokenizers bound = {full / stock:.2f}, / our bound = {full / alone:.2f},"
                f" / Megatron-LM 0.7 M = {full / MEGATRON_LM_TOKENS_PER_S:.1f}x"
            )
        stock, alone, full = (statistics.median(column) for column in zip(*rows))
        ratio = statistics.median(r[2] / r[0] for r in rows)
        print(
            f"median of {len(rows)}: preprocess {full / 1e6:.2f} M tokens/s, bound (tokenizers) {stock / 1e6:.2f},"
            f" bound (ours) {alone / 1e6:.2f}; preprocess / tokenizers bound {ratio:.2f} (target >= 0.85),"
            f" / our bound {statistics.median(r[2] / r[1] for r in rows):.2f};"
            f" {full / MEGATRON_LM_TOKENS_PER_S:.1f}x Megatron-LM's ~0.7 M tokens/s (target >= 2.3x, >= 1.6 M tokens/s)"
        )


if __name__ == "__main__":
    main()

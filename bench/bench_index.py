"""Index building and dataset reading: megatron_zh against megatron-core, measured in the same run.

  python bench/bench_index.py                      # everything (about a minute on 2 cores)
  python bench/bench_index.py --documents 1000000  # smaller index benchmark
  python bench/bench_index.py --skip-read --skip-memory

1. Index build: `megatron_zh._helpers` vs megatron-core's `helpers_cpp` on identical inputs
   (10 M documents by default): build_sample_idx at seq 128 and 1024, build_blending_indices and
   build_exhaustive_blending_indices. Prints the time ratio ours / theirs (target <= 1.0).
2. Read throughput: samples/s of GPTDataset[i] over a real preprocessed corpus (the CLUECorpusSmall
   sample under MEGATRON_ZH_DATA_DIR, via tools/preprocess_data.py), beside megatron-core's
   GPTDataset on the same files (create_attention_mask=False) as a ratio (higher is better).
3. Peak memory of building the train indices of a corpus described by a synthetic .idx of
   1e9 tokens in 5 M documents whose .bin is a sparse file: the build reads only the lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_zh import _helpers  # noqa: E402 (needs the sys.path set-up above)

DATA_DIR = Path(os.environ.get("MEGATRON_ZH_DATA_DIR", REPO.parent / "shared" / "data"))


def megatron_helpers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import helpers_cpp
    return helpers_cpp


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, ours, theirs, repeats: int) -> float:
    """Alternate the two (the machine is shared), report min and median, return the median ratio."""
    times = {"ours": [], "theirs": []}
    for r in range(repeats):
        order = [("ours", ours), ("theirs", theirs)] if r % 2 == 0 else [("theirs", theirs), ("ours", ours)]
        for who, fn in order:
            times[who].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["theirs"]
    print(
        f"  {name:<44} ours {med['ours'] * 1e3:8.1f} ms (min {min(times['ours']) * 1e3:7.1f})   "
        f"megatron-core {med['theirs'] * 1e3:8.1f} ms (min {min(times['theirs']) * 1e3:7.1f})   "
        f"ratio {ratio:5.2f}"
    )
    return ratio


def bench_index_build(num_documents: int, repeats: int) -> None:
    theirs = megatron_helpers()
    rng = np.random.default_rng(0)
    # Document lengths of a web-like corpus: mostly short, a long tail (mean ~200 tokens).
    sizes = np.clip(rng.lognormal(4.8, 1.0, num_documents), 1, 60_000).astype(np.int32)
    document_index = np.arange(num_documents, dtype=np.int32)
    rng.shuffle(document_index)
    tokens = int(sizes.sum(dtype=np.int64))
    print(f"index build: {num_documents:,} documents, {tokens:,} tokens, {repeats} runs each (median)")
    ratios = []
    for seq in (128, 1024):
        args = (sizes, document_index, seq, 1, tokens, True, 1)
        a, b = _helpers.build_sample_idx_int32(*args), theirs.build_sample_idx_int32(*args)
        assert np.array_equal(a, b), "outputs differ"
        del a, b
        ratios.append(
            compare(
                f"build_sample_idx_int32 seq={seq} ({tokens // seq:,} samples)",
                lambda args=args: _helpers.build_sample_idx_int32(*args),
                lambda args=args: theirs.build_sample_idx_int32(*args),
                repeats,
            )
        )
    size = num_documents
    weights = np.array([0.5, 0.3, 0.2])
    out_ours = (np.zeros(size, np.int16), np.zeros(size, np.int64))
    out_theirs = (np.zeros(size, np.int16), np.zeros(size, np.int64))
    ratios.append(
        compare(
            f"build_blending_indices 3 datasets, {size:,} samples",
            lambda: _helpers.build_blending_indices(*out_ours, weights, 3, size, False),
            lambda: theirs.build_blending_indices(*out_theirs, weights, 3, size, False),
            repeats,
        )
    )
    assert all(np.array_equal(x, y) for x, y in zip(out_ours, out_theirs)), "outputs differ"
    counts = np.array([size // 2, size // 3, size - size // 2 - size // 3], dtype=np.int64)
    ratios.append(
        compare(
            f"build_exhaustive_blending_indices 3 datasets, {size:,}",
            lambda: _helpers.build_exhaustive_blending_indices(*out_ours, counts, 3),
            lambda: theirs.build_exhaustive_blending_indices(*out_theirs, counts, 3),
            repeats,
        )
    )
    assert all(np.array_equal(x, y) for x, y in zip(out_ours, out_theirs)), "outputs differ"
    print(f"  => worst ratio ours/megatron-core: {max(ratios):.2f} (target <= 1.0)")


def preprocess_real_corpus(workdir: Path) -> str:
    """The CLUECorpusSmall sample as Megatron .bin/.idx: through tools/preprocess_data.py, or, where
    that tool is absent, tokenized by transformers.BertTokenizer and framed [CLS] ... [SEP]."""
    corpus, vocab = DATA_DIR / "CLUECorpusSmall_sampled.txt", DATA_DIR / "google_zh_vocab.txt"
    for path in (corpus, vocab):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: set MEGATRON_ZH_DATA_DIR to the folder with the real data")
    output = workdir / "clue"
    tool = REPO / "tools" / "preprocess_data.py"
    if tool.is_file():
        subprocess.run(
            [
                sys.executable,
                str(tool),
                "--input",
                str(corpus),
                "--output-prefix",
                str(output),
                "--vocab-file",
                str(vocab),
                "--workers",
                "1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return str(output) + "_text_document"
    from transformers import BertTokenizer

    from megatron_zh.data.indexed.builder import IndexedDatasetBuilder

    print("  (tools/preprocess_data.py not found: tokenizing with transformers.BertTokenizer)")
    tokenizer = BertTokenizer(str(vocab))
    builder = IndexedDatasetBuilder(str(output) + "_text_document", dtype=np.uint16)
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids = tokenizer.encode(line, add_special_tokens=False)
            builder.add_document(np.asarray([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]))
    builder.finalize()
    return str(output) + "_text_document"


def megatron_gpt_dataset(prefix: str, seq: int, num_samples: int, cache: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    class Tokenizer:  # what megatron-core's GPTDataset reads from a tokenizer
        vocab_size, eod, pad, unique_identifiers, special_tokens_dict = 21128, 102, 0, {"class": "bench"}, {}

    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=seq,
        blend=([prefix], None),
        split="100,0,0",
        tokenizer=Tokenizer(),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(cache),
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config).build()[0]


def bench_read(repeats: int) -> None:
    import torch

    from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
    from megatron_zh.data.datasets.config import DatasetConfig

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prefix = preprocess_real_corpus(workdir)
        from megatron_zh.data.indexed.dataset import IndexedDataset

        corpus = IndexedDataset(prefix)
        tokens = int(corpus.sequence_lengths.sum(dtype=np.int64))
        print(f"\nread throughput: {prefix.rsplit('/', 1)[-1]}: {len(corpus):,} documents, {tokens:,} tokens")
        for seq in (128, 1024):
            num_samples = max(2000, 4 * tokens // seq)  # several epochs: exercises multi-epoch indices
            config = DatasetConfig(
                data_path=[prefix], seq_length=seq, split="100,0,0", data_cache_path=str(workdir / "ours")
            )
            ours, _, _ = build_train_valid_test_datasets(config, (num_samples, 0, 0))
            theirs = megatron_gpt_dataset(prefix, seq, num_samples, workdir / "theirs")
            assert len(ours) == len(theirs)
            assert all(
                np.array_equal(ours[i]["input_ids"], theirs[i]["tokens"].numpy()) for i in range(0, len(ours), 97)
            )
            n = len(ours)

            def read_ours(ours=ours, n=n):
                for i in range(n):
                    ours[i]

            def read_theirs(theirs=theirs, n=n):
                for i in range(n):
                    theirs[i]

            ratio = compare(f"GPTDataset[i] seq={seq}, {n:,} samples", read_ours, read_theirs, repeats)
            seconds = timed(read_ours)
            print(
                f"    ours: {n / seconds:,.0f} samples/s, {n * seq / seconds / 1e6:.1f} M tokens/s; "
                f"speed-up over megatron-core {1 / ratio:.2f}x"
            )

            # What training sees: batches of 32 collated into tensors (ours are numpy until collated).
            def load_all(dataset):
                return lambda: sum(1 for _ in torch.utils.data.DataLoader(dataset, batch_size=32))

            ratio = compare(f"DataLoader(batch_size=32) seq={seq}", load_all(ours), load_all(theirs), repeats)
            seconds = timed(load_all(ours))
            print(f"    ours: {n / seconds:,.0f} samples/s through the DataLoader; speed-up {1 / ratio:.2f}x")


MEMORY_PROBE = r"""
import json, sys, time
from pathlib import Path
from megatron_zh.data.datasets.builder import build_train_valid_test_datasets
from megatron_zh.data.datasets.config import DatasetConfig

def status_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def mapped_rss_mib(path_suffix):  # resident pages of the mappings of one file (from /proc/self/smaps)
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5].endswith(path_suffix)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total / 1024

def reset_peak():  # Linux >= 4.0: restart VmHWM (peak RSS) from the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

prefix, seq, num_samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cache = str(Path(prefix).parent / "cache")
config = DatasetConfig(data_path=[prefix], seq_length=seq, split="100,0,0", data_cache_path=cache)
result = {"rss_before_mib": status_mib("VmRSS"), "anon_before_mib": status_mib("RssAnon")}
reset_peak()
start = time.perf_counter()
train, _, _ = build_train_valid_test_datasets(config, (num_samples, 0, 0))
result.update(build_seconds=time.perf_counter() - start, build_peak_mib=status_mib("VmHWM"),
              rss_after_build_mib=status_mib("VmRSS"), file_after_build_mib=status_mib("RssFile"), samples=len(train),
              bin_resident_mib=mapped_rss_mib(".bin"), idx_resident_mib=mapped_rss_mib(".idx"))
reset_peak()
for i in range(0, len(train), max(1, len(train) // 1000)):
    train[i]
result.update(reads_peak_mib=status_mib("VmHWM"), anon_mib=status_mib("RssAnon"), file_mib=status_mib("RssFile"))
print(json.dumps(result))
"""


def write_synthetic_corpus(prefix: Path, num_documents: int, num_tokens: int) -> None:
    """A Megatron MMIDIDX v1 .idx describing num_tokens uint16 tokens in num_documents documents,
    beside a sparse .bin of the matching size (no disk blocks, reads as zeros)."""
    rng = np.random.default_rng(0)
    raw = rng.lognormal(0.0, 1.0, num_documents)
    lengths = np.maximum(1, np.round(raw * (num_tokens / raw.sum()))).astype(np.int64)
    lengths[np.argmax(lengths)] += num_tokens - lengths.sum()  # exact total; the longest stays positive
    lengths = lengths.astype(np.int32)
    pointers = np.zeros(num_documents, dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * 2, out=pointers[1:])
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], dtype="<u8").tobytes())  # version
        f.write(np.array([8], dtype="<u1").tobytes())  # dtype code 8 = uint16
        f.write(np.array([num_documents, num_documents + 1], dtype="<u8").tobytes())
        lengths.tofile(f)
        pointers.tofile(f)
        np.arange(num_documents + 1, dtype=np.int64).tofile(f)
    with open(f"{prefix}.bin", "wb") as f:
        f.truncate(num_tokens * 2)


def bench_memory(num_documents: int, num_tokens: int, seq: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "synthetic_text_document"
        write_synthetic_corpus(prefix, num_documents, num_tokens)
        idx_mib = os.path.getsize(f"{prefix}.idx") / 2**20
        bin_gib = os.path.getsize(f"{prefix}.bin") / 2**30
        num_samples = (num_tokens - 1) // seq
        probe = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(prefix), str(seq), str(num_samples)],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        used_blocks = os.stat(f"{prefix}.bin").st_blocks * 512 / 2**20
    print(
        f"\npeak memory, building train indices for {num_tokens:,} tokens in {num_documents:,} documents "
        f"(seq {seq}, {result['samples']:,} samples; .idx {idx_mib:.0f} MiB, sparse .bin {bin_gib:.1f} GiB "
        f"of which {used_blocks:.0f} MiB on disk):\n"
        f"  RSS before {result['rss_before_mib']:.0f} MiB (interpreter + torch + numpy), "
        f"peak while building {result['build_peak_mib']:.0f} MiB "
        f"(+{result['build_peak_mib'] - result['rss_before_mib']:.0f} MiB) in {result['build_seconds']:.1f} s, "
        f"after building {result['rss_after_build_mib']:.0f} MiB;\n"
        f"  process (anonymous) memory: {result['anon_before_mib']:.0f} MiB before, at most "
        f"{result['build_peak_mib'] - result['file_after_build_mib']:.0f} MiB while building "
        f"(peak minus the {result['file_after_build_mib']:.0f} MiB of file pages mapped after it);\n"
        f"  resident after building: .idx {result['idx_resident_mib']:.0f} MiB, "
        f".bin {result['bin_resident_mib']:.1f} MiB "
        "(the build reads the document lengths only);\n"
        f"  peak over 1000 sample reads {result['reads_peak_mib']:.0f} MiB, of which {result['file_mib']:.0f} MiB are "
        f"memory-mapped file pages (page cache, reclaimable) and {result['anon_mib']:.0f} MiB process memory"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=10_000_000, help="documents in the index benchmark")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (median reported)")
    parser.add_argument("--memory-documents", type=int, default=5_000_000)
    parser.add_argument("--memory-tokens", type=float, default=1e9)
    parser.add_argument("--memory-seq", type=int, default=128)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-read", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if not args.skip_index:
        bench_index_build(args.documents, args.repeats)
    if not args.skip_read:
        bench_read(max(1, args.repeats // 2))
    if not args.skip_memory:
        bench_memory(args.memory_documents, int(args.memory_tokens), args.memory_seq)


if __name__ == "__main__":
    main()

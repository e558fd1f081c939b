"""The --jsonl case of bench/bench_preprocess.py: what refusing a key written twice costs on JSON-lines input.

Every record of a JSON-lines corpus is parsed with `fileio.loads_json` (json.loads with an object_pairs_hook
that refuses duplicate keys). The baseline is the same pipeline, same input, with plain `json.loads` in its
place. Each case runs in a fresh process (CPU time of the main process and its workers is counted); the two
take turns within each repeat, so other jobs' load hits them alike.

On a shared machine whole-pipeline times vary by more than the 2% at stake, so the parse is also timed
alone (the best of several passes over the same records, which other jobs' load can only lengthen): its extra
microseconds per record, against the pipeline's CPU microseconds per record, are the check's share.
"""

from __future__ import annotations

import json
import os
import statistics
import timeit
from pathlib import Path

from preprocess_compressed import CHILD, measure  # bench/preprocess_compressed.py

CASES = ("json.loads", "loads_json")  # baseline first
# The child of preprocess_compressed with the baseline's parser swapped in (forked workers inherit it).
JSONL_CHILD = (
    """
import json, sys
if sys.argv[5] == "json.loads":
    from megatron_zh.data.preprocess import formats
    formats.loads_json = json.loads
"""
    + CHILD
)


def build_jsonl(directory: Path, sample: Path, size_mb: float) -> Path:
    """The sample's documents as records {"text": ..., "meta": {"id": n, "source": ...}}, repeated to `size_mb`."""
    documents = [d for d in sample.read_text(encoding="utf-8").split("\n") if d.strip()]
    path = directory / "corpus.jsonl"
    number = 0
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < size_mb * 1e6:
            for text in documents:
                f.write(json.dumps({"text": text, "meta": {"id": number, "source": sample.name}}, ensure_ascii=False))
                f.write("\n")
                number += 1
    return path


def parse_alone(corpus: Path, records: int = 20000, passes: int = 9) -> dict[str, float]:
    """Microseconds per record of each parser on the corpus's first `records` lines: the best of `passes`."""
    from megatron_zh.fileio import loads_json

    with open(corpus, encoding="utf-8") as f:
        lines = [line for line, _ in zip(f, range(records))]

    def best(parse) -> float:
        return min(timeit.repeat(lambda: [parse(line) for line in lines], number=1, repeat=passes)) / len(lines) * 1e6

    return {"json.loads": best(json.loads), "loads_json": best(loads_json)}


def run_jsonl(vocab: Path, sample: Path, size_mb: float, workers: int, repeats: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        corpus = build_jsonl(directory, sample, size_mb)
        print(
            f"corpus: {corpus.stat().st_size / 1e6:.1f} MB of JSON lines ({sample.name}'s documents with a nested"
            f" meta object); {workers} worker(s), {os.cpu_count()} CPU(s)"
        )
        wall: dict[str, list[float]] = {name: [] for name in CASES}
        cpu: dict[str, list[float]] = {name: [] for name in CASES}
        results = set()
        for repeat in range(1, repeats + 1):
            row = []
            for name in CASES:
                m = measure([corpus], vocab, workers, directory, JSONL_CHILD, (name,))
                results.add((m["documents"], m["tokens"]))
                wall[name].append(m["tokens"] / m["seconds"])
                cpu[name].append(m["tokens"] / m["cpu_seconds"])
                row.append(f"{name} {wall[name][-1] / 1e6:.3f} M tokens/s ({m['cpu_seconds']:.1f} CPU s)")
            print(f"repeat {repeat}: " + " | ".join(row))
        assert len(results) == 1, f"the two parsers disagree on documents/tokens: {results}"
        ratio = statistics.median(c / b for c, b in zip(wall["loads_json"], wall["json.loads"]))
        cpu_ratio = statistics.median(c / b for c, b in zip(cpu["loads_json"], cpu["json.loads"]))
        print(
            f"median of {repeats}: loads_json / json.loads tokens/s = {ratio:.3f} (cost {100 * (1 - ratio):+.1f}%),"
            f" per CPU second = {cpu_ratio:.3f} (cost {100 * (1 - cpu_ratio):+.1f}%); adopt if the cost is under 2%"
        )
        with open(corpus, "rb") as f:
            records = sum(1 for _ in f)
        tokens = next(iter(results))[1]
        pipeline_us = tokens / statistics.median(cpu["json.loads"]) / records * 1e6  # CPU s per record, all processes
        alone = parse_alone(corpus)
        extra = alone["loads_json"] - alone["json.loads"]
        print(
            f"parse alone (best of 9 passes): json.loads {alone['json.loads']:.2f} us/record, loads_json"
            f" {alone['loads_json']:.2f}; the check's extra {extra:.2f} us/record is {100 * extra / pipeline_us:.2f}%"
            f" of the pipeline's {pipeline_us:.1f} CPU us/record (json.loads, median; {records:,} records)"
        )

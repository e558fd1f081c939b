"""The --compressed case of bench/bench_preprocess.py: compressed and archived inputs against the same text.

Each input is preprocessed in a fresh process (so its peak RSS is its own) with --document-boundary
blank-line; the cases take turns within each repeat, so machine noise hits them alike.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUE_PARTS = ("news2016zh_corpus", "webText2019zh_corpus", "wiki2019zh_corpus", "comment2019zh_corpus")
MEMBER_BYTES = 8 << 20  # CLUECorpusSmall's zips hold many files of a few MB each

# Run in the child: one preprocessing run, then its own peak RSS and its workers' largest.
CHILD = """
import json, re, resource, sys, time
from megatron_zh.data.preprocess.pipeline import preprocess
from megatron_zh.data.preprocess.config import PreprocessConfig
start = time.perf_counter()
stats = preprocess(PreprocessConfig(inputs=sys.argv[1].split("|"), output_prefix=sys.argv[2], vocab_file=sys.argv[3],
                   workers=int(sys.argv[4]), document_boundary="blank-line", progress=False))
seconds = time.perf_counter() - start
main_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)
print(json.dumps({"tokens": stats.tokens["text"], "documents": stats.documents["text"], "seconds": seconds,
                  "cpu_seconds": cpu, "main_mb": main_kb / 1024, "worker_mb": usage[1].ru_maxrss / 1024}))
"""


def clue_shaped_block(sample: Path) -> bytes:
    """The sample's documents as CLUECorpusSmall lays them out: a sentence per line, a blank line after each."""
    documents = [d for d in sample.read_text(encoding="utf-8").split("\n") if d.strip()]
    return "".join("\n".join(s + "。" for s in d.split("。") if s) + "\n\n" for d in documents).encode("utf-8")


def build_inputs(directory: Path, sample: Path, zip_mb: float) -> dict[str, list[Path]]:
    block = clue_shaped_block(sample)
    ratio = len(zlib.compress(block, 6)) / len(block)
    copies = max(1, int(-(-zip_mb * 1e6 / ratio // len(block))))
    plain = directory / "corpus.txt"
    with open(plain, "wb") as f:
        for _ in range(copies):
            f.write(block)
    with open(plain, "rb") as src, gzip.open(directory / "corpus.txt.gz", "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    import zstandard

    # A 1 MB window (level 3's own is larger): no match reaches back to the previous copy of the sample, so the
    # file is as large, and as much work to decompress, as a real corpus's.
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=20)
    with open(plain, "rb") as src, open(directory / "corpus.txt.zst", "wb") as raw:
        zstandard.ZstdCompressor(compression_params=params).copy_stream(src, raw)
    # The four zips: the same text cut into members of about MEMBER_BYTES, dealt to the parts in turn.
    zips = [
        zipfile.ZipFile(directory / f"{part}.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=6) for part in CLUE_PARTS
    ]
    per_member = max(1, MEMBER_BYTES // len(block))
    for member, first in enumerate(range(0, copies, per_member)):
        part = member % len(CLUE_PARTS)
        with zips[part].open(f"{CLUE_PARTS[part]}/{member // len(CLUE_PARTS):04d}.txt", "w") as out:
            for _ in range(min(per_member, copies - first)):
                out.write(block)
    for archive in zips:
        archive.close()
    return {
        "plain .txt": [plain],
        ".txt.gz": [directory / "corpus.txt.gz"],
        ".txt.zst": [directory / "corpus.txt.zst"],
        ".zip": [directory / f"{part}.zip" for part in CLUE_PARTS],
    }


def measure(
    inputs: list[Path], vocab: Path, workers: int, out: Path, child: str = CHILD, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    """One preprocessing run of `inputs` in a fresh process running `child` (CHILD, or a variant of it that reads
    `extra` after the four arguments)."""
    result = subprocess.run(
        [sys.executable, "-c", child, "|".join(map(str, inputs)), str(out / "bench"), str(vocab), str(workers), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    if result.returncode != 0:
        sys.exit(f"preprocessing {inputs} failed:\n{result.stderr[-3000:]}")
    for path in out.glob("bench*"):
        path.unlink()
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_compressed(vocab: Path, sample: Path, zip_mb: float, workers: int, repeats: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        start = time.perf_counter()
        cases = build_inputs(directory, sample, zip_mb)
        sizes = {name: sum(p.stat().st_size for p in paths) / 1e6 for name, paths in cases.items()}
        print(
            f"corpus: {sizes['plain .txt']:.1f} MB of CLUECorpusSmall-shaped text (blank-line documents); "
            + ", ".join(f"{name} {mb:.1f} MB" for name, mb in sizes.items() if name != "plain .txt")
            + f" (the zips: {len(CLUE_PARTS)} files); built in {time.perf_counter() - start:.0f} s;"
            f" {workers} worker(s), {os.cpu_count()} CPU(s)"
        )
        rates: dict[str, list[float]] = {name: [] for name in cases}
        cpu_rates: dict[str, list[float]] = {name: [] for name in cases}  # tokens per CPU second, all processes
        documents = set()
        for repeat in range(1, repeats + 1):
            row = []
            for name, paths in cases.items():
                m = measure(paths, vocab, workers, directory)
                documents.add((m["documents"], m["tokens"]))
                rates[name].append(m["tokens"] / m["seconds"])
                cpu_rates[name].append(m["tokens"] / m["cpu_seconds"])
                row.append(
                    f"{name} {m['tokens'] / m['seconds'] / 1e6:.2f} M tokens/s ({m['seconds']:.1f} s,"
                    f" {m['cpu_seconds']:.1f} CPU s, peak RSS main {m['main_mb']:.0f} MB,"
                    f" worker {m['worker_mb']:.0f} MB)"
                )
            print(f"repeat {repeat}: " + " | ".join(row))
        assert len(documents) == 1, f"the inputs disagree on documents/tokens: {documents}"
        # Ratios within each repeat (the cases ran back to back), then their median: other jobs' load drifts.
        plain, plain_cpu = rates.pop("plain .txt"), cpu_rates.pop("plain .txt")
        ratios = ", ".join(
            f"{name} / plain tokens/s = {statistics.median([c / p for c, p in zip(r, plain)]):.2f}"
            for name, r in rates.items()
        )
        print(f"median of {repeats}: plain {statistics.median(plain) / 1e6:.2f} M tokens/s; {ratios} (target >= 0.75)")
        # The extra CPU a compressed input costs (decompression in the main process) is what slows it on an
        # idle machine whose cores are all busy; unlike wall-clock time it hardly depends on other jobs.
        print(
            "per CPU second (all processes): "
            + ", ".join(
                f"{name} / plain = {statistics.median([c / p for c, p in zip(r, plain_cpu)]):.2f}"
                for name, r in cpu_rates.items()
            )
        )

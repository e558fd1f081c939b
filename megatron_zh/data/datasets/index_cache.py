"""Build-once cache of dataset index arrays, safe for many ranks and many jobs at once.

Index arrays (document/sample/shuffle indices, blending indices) are saved as `.npy` files named
`<key>-<kind>-<array>.npy`, where `key` hashes everything that determines them, next to a
`<key>-<kind>-description.json` that spells those inputs out. Guarantees:

* a reader never sees a half-written file: each file is written under a temporary name and
  renamed into place when complete (`megatron_zh.fileio.atomic_write`), the description last;
* two processes that miss the cache at once build it once: the builder holds an exclusive
  `flock` on `<key>-<kind>.lock` and re-checks the cache after taking it;
* within one job, `rank0_first` lets global rank 0 build while the other ranks wait, then they
  load what it wrote (and fail fast with rank 0's error if it failed, instead of hanging).
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import torch.distributed as dist

from megatron_zh.errors import ConfigError, MegatronZhError
from megatron_zh.fileio import atomic_write, loads_json
from megatron_zh.log import get_logger

logger = get_logger(__name__)

# Bump when the meaning or layout of any cached array changes: old caches then simply miss.
INDEX_FORMAT_VERSION = 1

T = TypeVar("T")


def description_key(description: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description (key order does not matter)."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class IndexCache:
    """The cached arrays of one `kind` (e.g. "GPTDataset-train") for one description."""

    directory: Path
    kind: str
    description: dict[str, Any]
    array_names: tuple[str, ...]

    @property
    def key(self) -> str:
        return description_key(self.description)

    def path(self, name: str) -> Path:
        return self.directory / f"{self.key}-{self.kind}-{name}.npy"

    @property
    def description_path(self) -> Path:
        return self.directory / f"{self.key}-{self.kind}-description.json"

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.key}-{self.kind}.lock"

    def load(self) -> dict[str, np.ndarray] | None:
        """The cached arrays, memory-mapped read-only, or None on a miss or an unreadable file."""
        if not self.description_path.is_file():
            return None
        try:
            # A damaged description (not JSON, a key written twice) is a ValueError: rebuilt below.
            if loads_json(self.description_path.read_text(encoding="utf-8")) != self.description:
                logger.warning("%s describes other inputs (hash collision?); rebuilding", self.description_path)
                return None
            # Plain ndarray views of the maps: indexing an np.memmap goes through its Python
            # subclass hooks, which costs a third of a sample read.
            return {
                name: np.load(self.path(name), mmap_mode="r", allow_pickle=False).view(np.ndarray)
                for name in self.array_names
            }
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # truncated or damaged by something outside our control
            logger.warning("unreadable index cache file (%s); rebuilding it", exc)
            return None

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self.array_names:
            with atomic_write(self.path(name), "wb") as f:
                np.save(f, arrays[name], allow_pickle=False)
        # Written last: its presence says every array above is complete.
        with atomic_write(self.description_path, "w", encoding="utf-8") as f:
            json.dump(self.description, f, indent=2, sort_keys=True)
            f.write("\n")


class MappedIndices(abc.ABC):
    """Base of a dataset whose index arrays come from an `IndexCache`, one typed attribute per
    array of `cache.array_names`, set by `attach`. It pickles without them and re-maps the cache
    when unpickled, so DataLoader workers started with "spawn" share the page cache instead of each
    receiving a copy of the indices."""

    cache: IndexCache

    @abc.abstractmethod
    def attach(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the attribute of each array in `cache.array_names` from `arrays`."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self.cache.array_names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        arrays = self.cache.load()
        if arrays is None:
            raise MegatronZhError(f"index cache {self.cache.description_path} vanished after the dataset was built")
        self.attach(arrays)


def _open_lock_file(cache: IndexCache) -> BinaryIO:
    try:
        cache.directory.mkdir(parents=True, exist_ok=True)
        return open(cache.lock_path, "a+b")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the dataset index cache in {cache.directory}: {exc}; "
            "point cache_dir (--data-cache-path) at a writable directory"
        ) from exc


@contextlib.contextmanager
def _exclusive(handle: BinaryIO) -> Iterator[None]:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.info("waiting for another process that is building %s", handle.name)
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_build(cache: IndexCache, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load `cache`, or build it with `build()` exactly once across processes, save and load it."""
    arrays = cache.load()
    if arrays is not None:
        logger.info("loaded %s indices from %s", cache.kind, cache.description_path)
        return arrays
    with _open_lock_file(cache) as handle, _exclusive(handle):
        arrays = cache.load()  # another process may have built it while we waited for the lock
        if arrays is not None:
            return arrays
        start = time.perf_counter()
        cache.save(build())
        logger.info("built %s indices in %.2f s -> %s", cache.kind, time.perf_counter() - start, cache.description_path)
        arrays = cache.load()
    if arrays is None:
        raise MegatronZhError(f"index cache {cache.description_path} could not be read back after writing it")
    return arrays


def rank0_first(build: Callable[[], T]) -> T:
    """Run `build` on global rank 0, then on every other rank (which then finds rank 0's cache).

    Without torch.distributed it simply calls `build()`. If rank 0 fails, the other ranks raise
    its error instead of waiting forever at a barrier.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return build()
    rank = dist.get_rank()
    built: list[T] = []  # rank 0's result, once it has one
    failure: BaseException | None = None
    if rank == 0:
        try:
            built.append(build())
        except Exception as exc:  # reported to the other ranks, then re-raised here
            failure = exc
    status: list[str | None] = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    dist.broadcast_object_list(status, src=0)  # doubles as the barrier
    if failure is not None:
        raise failure
    if rank == 0:
        return built[0]
    if status[0] is not None:
        raise MegatronZhError(f"rank 0 failed to build the dataset indices: {status[0]}")
    return build()


def array_digest(array: np.ndarray) -> str:
    """blake2b of an array's bytes (read through its memory map; no copy when contiguous)."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
    return f"blake2b:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def default_index_cache_dir(prefix: str | os.PathLike[str]) -> Path:
    """Where a dataset's indices go when no cache_dir is given: `index-cache/` beside its files."""
    return Path(prefix).resolve().parent / "index-cache"

"""Every checkpoint file is read with PyTorch's restricted unpickler, against an explicit allowlist.

A `.pt` file is a pickle: loaded with `weights_only=False` it may call any function it names
(`os.system`, `pathlib.Path.unlink`, ...). `safe_load` reads it with `weights_only=True`, which
rebuilds only tensors, containers and primitive values, plus the few classes listed in
`ALLOWED_GLOBALS` that real checkpoints of this project hold. Anything else is refused with one
line naming the file and the offending global, unless the user trusts the file: `--trust-checkpoint`,
which a tool's entry point turns into `with trusting_checkpoints(args.trust_checkpoint): ...`. The
trust lasts for that block only (a context variable, like torch.no_grad), so nothing that runs after
it, a test or a second tool in the same process, inherits it.

DeepSpeed's own `engine.load_checkpoint` unpickles with `weights_only=False`; training scans a
checkpoint's files with `check_checkpoint_files` before the process group starts and routes the
engine's reads through `safe_load` (`guard_engine_loads`), so no file reaches a full unpickler
unchecked.

Damaged files (empty, truncated, not a PyTorch file) raise CheckpointError too, never a traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import importlib
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_zh.errors import CheckpointError
from megatron_zh.log import get_logger

logger = get_logger(__name__)

# Qualified name -> why a real checkpoint needs it. Found with torch.serialization.
# get_unsafe_globals_in_checkpoint on checkpoints pretrain_gpt.py wrote (fp32 ZeRO-1, bf16 with fp32
# gradient accumulation / BF16_Optimizer) and on the object DeepSpeed saves under fp16.
ALLOWED_GLOBALS: dict[str, str] = {
    # Our client state: rng_states[r]["numpy"] is np.random.get_state(), a uint32 key array.
    "numpy._core.multiarray._reconstruct": "numpy arrays (the numpy RNG state in rng_states)",
    "numpy.core.multiarray._reconstruct": "numpy arrays, as numpy 1.x names the constructor",
    "numpy.ndarray": "numpy arrays (the numpy RNG state in rng_states)",
    "numpy.dtype": "the dtype of that array",
    "numpy.dtypes.UInt32DType": "the dtype class of that array (uint32)",
    # DeepSpeed's ZeRO-1/2 optimizer files (*zero_pp_rank_*_optim_states.pt).
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": "optimizer_state_dict.loss_scaler (fp32/bf16: static scale 1)",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": "optimizer_state_dict.loss_scaler under fp16",
    "deepspeed.runtime.zero.config.ZeroStageEnum": "optimizer_state_dict.zero_stage",
    "deepspeed.utils.tensor_fragment.fragment_address": "optimizer_state_dict.param_slice_mappings",
}
# Always allowed (cheap to resolve); the DeepSpeed classes are imported only when a file names them.
# numpy 2 names its array constructor numpy._core...; importing numpy.core there is deprecated.
_ALWAYS = (
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.UInt32DType",
    "numpy._core.multiarray._reconstruct" if hasattr(np, "_core") else "numpy.core.multiarray._reconstruct",
)

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("megatron_zh_trust_checkpoints", default=False)


@contextlib.contextmanager
def trusting_checkpoints(enabled: bool) -> Iterator[None]:
    """`--trust-checkpoint`: inside this block, checkpoint files are read with the full unpickler (they may
    run code). `enabled=False` is the restricted default, so entry points can pass the flag straight in."""
    if enabled:
        logger.warning("--trust-checkpoint: checkpoint files are unpickled without restriction; they can run code")
    token = _TRUSTED.set(enabled)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _trusted() -> bool:
    return _TRUSTED.get()


def _resolve(name: str) -> Any | None:
    """The object an allowlisted qualified name stands for (None where this install lacks it)."""
    if name not in ALLOWED_GLOBALS:
        raise KeyError(name)
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _allowed_objects(names: Iterable[str]) -> list[Any]:
    wanted = {*_ALWAYS, *(name for name in names if name in ALLOWED_GLOBALS)}
    return [obj for name in sorted(wanted) if (obj := _resolve(name)) is not None]


@contextlib.contextmanager
def _only_our_allowlist() -> Iterator[None]:
    """Set aside what other libraries added to torch's process-wide allowlist (megatron-core adds
    argparse.Namespace on import, for one): our check must not widen with whatever was imported."""
    foreign = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.add_safe_globals(foreign)


def _globals_named(path: Path) -> list[str]:
    """The globals the pickle references that PyTorch does not allow by default (zip files only)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint: allow the list (numpy's part is always in) and let torch.load judge
        return [name for name in ALLOWED_GLOBALS if not name.startswith("numpy")]


_GLOBAL_PATTERNS = (
    re.compile(r"GLOBAL ([\w.]+) was not an allowed global"),
    re.compile(r"but got <class '([\w.]+)'>"),
    re.compile(r"Unsupported global: GLOBAL ([\w.]+)"),
    re.compile(r"Trying to call reduce for callable ([\w.<>]+)"),
    re.compile(r"unsupported GLOBAL ([\w.]+) whose module"),
)


def _offending_global(message: str) -> str | None:
    for pattern in _GLOBAL_PATTERNS:
        if match := pattern.search(message):
            return match.group(1)
    return None


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive
LEGACY_MAGIC = b"\x80\x02"  # ... before that, a bare pickle (protocol 2)


def file_damage(path: Path) -> str | None:
    """What is visibly wrong with a checkpoint file, judged from its size and its zip structure only (no
    unpickling, a few KB read): "is empty (0 bytes)", "is truncated (...)", ...; None if it looks whole.

    A file cut short (a kill mid-write, a full disk) loses the end of its zip archive, where the archive's
    directory is, so a torch.save file without it is truncated."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(LEGACY_MAGIC):
        return None  # an old-style torch.save pickle: nothing to check without reading it
    if head != ZIP_MAGIC:
        return f"is truncated or not a PyTorch checkpoint ({size} bytes, beginning {head!r})"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return f"is truncated ({size} bytes: a PyTorch zip file whose end, the archive's directory, is missing)"
    if not any(name.endswith("data.pkl") for name in names):
        return f"is not a PyTorch checkpoint ({size} bytes: a zip file without data.pkl)"
    return None


def _describe_failure(path: Path, exc: BaseException) -> str:
    """One line for a file that could not be read: what it looks like and what to do."""
    damage = file_damage(path)
    if damage is not None:
        return f"{path} {damage}: the checkpoint is damaged (an interrupted save, a full disk or a partial copy)"
    # torch raises OSError(EINVAL) on a file it cannot parse; any other OSError is the storage's.
    if isinstance(exc, OSError) and exc.errno != errno.EINVAL:
        return f"cannot read {path}: {exc.strerror or exc}"
    return f"cannot read {path}: {type(exc).__name__}: {_first_sentence(exc)}: the checkpoint is damaged"


def _refuse(path: Path, offending: str | None) -> CheckpointError:
    what = f"global {offending}" if offending else "an object the restricted unpickler refuses"
    return CheckpointError(
        f"{path} needs {what}, which is not on the checkpoint allowlist (megatron_zh/checkpoint/safety.py): "
        "loading it could run code; if you trust where it came from, pass --trust-checkpoint"
    )


def safe_load(path: str | Path, *, map_location: Any = "cpu", mmap: bool = True) -> Any:
    """torch.load with the restricted unpickler and ALLOWED_GLOBALS; CheckpointError on anything else.

    mmap=True maps tensor storages instead of reading them (copy-on-write), for zip-format files.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the checkpoint is missing a file")
    mmap = mmap and zipfile.is_zipfile(path)  # legacy (non-zip) torch.save files cannot be mapped
    if _trusted():
        try:
            return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        except Exception as exc:
            raise CheckpointError(_describe_failure(path, exc)) from None
    with _only_our_allowlist():
        return _restricted_load(path, map_location, mmap)


def _restricted_load(path: Path, map_location: Any, mmap: bool) -> Any:
    named = _globals_named(path)
    refused = [name for name in named if name not in ALLOWED_GLOBALS]
    if refused:
        raise _refuse(path, refused[0])
    try:
        with torch.serialization.safe_globals(_allowed_objects(named)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        offending = _offending_global(str(exc))
        # A zip checkpoint the restricted unpickler stops is refused; a non-zip file it stops without naming
        # a global is garbage (a text file, a torn write), not an attack.
        if "Weights only load failed" not in str(exc) or (offending is None and not zipfile.is_zipfile(path)):
            raise CheckpointError(_describe_failure(path, exc)) from None
        raise _refuse(path, offending) from None
    except Exception as exc:  # truncated or foreign files raise many different types
        raise CheckpointError(_describe_failure(path, exc)) from None


def check_checkpoint_files(folder: str | Path) -> list[Path]:
    """Open every .pt file below `folder` with `safe_load` (tensors mapped, not read). Returns the files."""
    files = sorted(Path(folder).rglob("*.pt"))
    if not _trusted():
        for path in files:
            safe_load(path, mmap=True)
    return files


def guard_engine_loads(engine: Any) -> None:
    """Make a DeepSpeed engine read checkpoint files through `safe_load` (DeepSpeed's own loader
    unpickles with weights_only=False). A no-op under --trust-checkpoint."""
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if _trusted() or checkpoint_engine is None:
        return

    def load(path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location=map_location, mmap=False)

    checkpoint_engine.load = load


TRUST_FLAG_HELP = (
    "unpickle checkpoint files without PyTorch's restricted unpickler (only for files you trust: they can run code)"
)


def add_trust_flag(parser: Any) -> None:
    """`--trust-checkpoint` for a tool that reads checkpoints; the tool runs its work inside
    `trusting_checkpoints(args.trust_checkpoint)`."""
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_FLAG_HELP)

"""pretrain_gpt.py on storage that fails while a checkpoint is written, for tests/integration/test_checkpoint_guard.py.

FAULTY_SAVE="SUBSTRING=ACTION" makes torch.save (what DeepSpeed's checkpoint engine calls) misbehave for
the first file whose path contains SUBSTRING, on whichever rank writes it:

    enospc          write a few bytes, then raise OSError(ENOSPC), as a disk that fills mid-write does
    pause:MARKER    create the file MARKER, then sleep (the test kills every rank while they wait)

Everything else is the real run.

    deepspeed --num_gpus 2 tests/support/faulty_storage_pretrain.py --ds_config ... (FAULTY_SAVE in the environment)
"""

import errno
import os
import time
from pathlib import Path

import torch

from megatron_zh.cli import run_cli

_real_save = torch.save
_match, _, _action = os.environ.get("FAULTY_SAVE", "").partition("=")


def _faulty_save(obj, f, *args, **kwargs):
    if _match and isinstance(f, (str, os.PathLike)) and _match in os.fspath(f):
        if _action == "enospc":
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 half a shard")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(f))
        if _action.startswith("pause:"):
            Path(_action.removeprefix("pause:")).touch()
            time.sleep(3600)
    return _real_save(obj, f, *args, **kwargs)


torch.save = _faulty_save

if __name__ == "__main__":
    from megatron_zh.training.pretrain import main

    run_cli(main)

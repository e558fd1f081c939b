"""The restricted unpickler: what real checkpoints need loads, anything else is refused by name, and trust is scoped."""

from __future__ import annotations

import pytest
import torch
from hostile import Payload

from megatron_zh.checkpoint.safety import file_damage, safe_load, trusting_checkpoints
from megatron_zh.errors import CheckpointError


def test_deepspeed_fp16_loss_scaler_is_on_the_allowlist(tmp_path):
    """fp16 runs (GPU only) save a DynamicLossScaler in the optimizer state: the object DeepSpeed pickles loads."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler

    # As DeepSpeed's ZeRO-1/2 optimizer builds it for fp16 with dynamic loss scaling (the fp16 default).
    dynamic = dict(init_scale=2**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False)
    scaler = CreateLossScaler(torch.float16, static_loss_scale=0, dynamic_scaling=True, dynamic_loss_args=dynamic)
    assert type(scaler).__name__ == "DynamicLossScaler"
    torch.save({"optimizer_state_dict": {"loss_scaler": scaler}}, tmp_path / "fp16.pt")
    assert safe_load(tmp_path / "fp16.pt")["optimizer_state_dict"]["loss_scaler"].cur_scale == 2**16


def test_legacy_format_pickles_are_checked_too(tmp_path):
    """pytorch_model.bin files from before torch's zip format (convert_from_hf.py reads them) go through the
    same restricted unpickler: tensors load, a payload is refused by name."""
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.bin", _use_new_zipfile_serialization=False)
    torch.save({"w": Payload(marker)}, tmp_path / "hostile.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(tmp_path / "plain.bin")["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="hostile.bin needs global posix.system"):
        safe_load(tmp_path / "hostile.bin")
    assert not marker.exists()


def test_trust_lasts_for_its_block_only(tmp_path):
    """--trust-checkpoint is scoped: inside `trusting_checkpoints(True)` the full unpickler runs the file (so the
    payload does run), and after the block, even one that raised, the same file is refused again."""
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, tmp_path / "hostile.pt")
    with pytest.raises(RuntimeError, match="leaves the block"):
        with trusting_checkpoints(True):
            safe_load(tmp_path / "hostile.pt")
            raise RuntimeError("leaves the block")
    assert marker.exists(), "inside the block the file is trusted and unpickled without restriction"
    marker.unlink()
    with pytest.raises(CheckpointError, match="hostile.pt needs global posix.system"):
        safe_load(tmp_path / "hostile.pt")
    with trusting_checkpoints(False), pytest.raises(CheckpointError, match="needs global posix.system"):
        safe_load(tmp_path / "hostile.pt")
    assert not marker.exists()


def test_a_file_cut_short_anywhere_is_called_truncated(tmp_path):
    """A small torch.save file (a UER-py model, a model-states file of a tiny model) cut at any length: torch
    says "Invalid argument" (OSError EINVAL) for most cuts; the line says truncated, and how long it is.
    (The UER-py importer reads through safe_load: tests/convert/test_convert_safety.py.)"""
    whole = tmp_path / "whole.bin"
    torch.save({"embedding.word.embedding.weight": torch.randn(50, 20), "b": torch.randn(300)}, whole)
    data = whole.read_bytes()
    assert file_damage(whole) is None
    cut = tmp_path / "cut.bin"
    for length in range(1, len(data), 97):
        cut.write_bytes(data[:length])
        for mmap in (False, True):
            with pytest.raises(CheckpointError) as caught:
                safe_load(cut, mmap=mmap)
            message = str(caught.value)
            assert message.startswith(f"{cut} is truncated"), message
            assert f"({length} bytes" in message and "the checkpoint is damaged" in message
    cut.write_bytes(b"")
    assert file_damage(cut) == "is empty (0 bytes)"
    cut.write_text("not a checkpoint")
    assert file_damage(cut) == "is truncated or not a PyTorch checkpoint (16 bytes, beginning b'not ')"

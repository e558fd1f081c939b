"""The JSON files a checkpoint holds refuse a key written twice: the client state (an error: the checkpoint is
damaged) and the universal cache's marker (the cache is not trusted, so it is converted again)."""

from __future__ import annotations

import json

import pytest

from megatron_zh.checkpoint.client_state import read_client_state
from megatron_zh.checkpoint.layout import CLIENT_STATE_FILE, MODEL_STATES_FILE
from megatron_zh.checkpoint.universal import CACHE_MARKER, cache_is_valid, source_files
from megatron_zh.errors import CheckpointError


def test_a_client_state_with_a_key_written_twice_is_damaged(tmp_path):
    folder = tmp_path / "global_step8"
    folder.mkdir()
    (folder / MODEL_STATES_FILE).write_bytes(b"")  # present; never read while client_state.json answers
    (folder / CLIENT_STATE_FILE).write_text('{\n  "iteration": 8,\n  "consumed_samples": 128,\n  "iteration": 80\n}\n')
    with pytest.raises(CheckpointError) as caught:
        read_client_state(tmp_path, "global_step8")
    assert str(caught.value) == (
        f'{folder / CLIENT_STATE_FILE}: key "iteration" is written twice (lines 2 and 4); JSON readers silently '
        "keep only the last: remove one; the checkpoint is damaged"
    )


def test_a_universal_marker_with_a_key_written_twice_is_not_trusted(tmp_path):
    folder, cache = tmp_path / "global_step8", tmp_path / "global_step8_universal"
    folder.mkdir()
    cache.mkdir()
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    marker = {"source": folder.name, "files": source_files(folder)}
    (cache / CACHE_MARKER).write_text(json.dumps(marker))
    assert cache_is_valid(folder, cache)
    (cache / CACHE_MARKER).write_text(json.dumps(marker)[:-1] + ', "files": {}}')  # json alone would keep {}
    assert not cache_is_valid(folder, cache)

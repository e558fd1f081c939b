"""Host syncs per training step: a step that logs nothing reads no device value back in megatron_zh's code.

tests/support/count_syncs_pretrain.py runs pretrain_gpt.py (ds_configs/cpu_tiny.json, ZeRO-1, 2 CPU ranks)
with every host read of a tensor's value counted (.item(), .tolist(), bool(t), ...: each a sync on a GPU),
per step and call site. The loop reads the losses back only at log steps (and before an evaluation or a
save); whether to stop is agreed from host memory. What DeepSpeed's engine reads itself is pinned too, so a
DeepSpeed upgrade that adds one shows here.
"""

from __future__ import annotations

import json

import pytest
from repo_paths import SUPPORT
from training_runs import pretrain_args, run

pytestmark = pytest.mark.integration

LOG_INTERVAL, TRAIN_ITERS = 4, 8
# DeepSpeed 0.19.8's ZeRO-1 step (cpu_tiny.json: fp32, clipping, 2 micro-batches per step) on CPU ranks: 3
# bool() of the gradient norm's validity (is_invalid_grad_norm; syncs on a GPU too) and 2 .item() of torch
# AdamW's step counters, one per parameter group (CPU tensors: no sync on a GPU).
DEEPSPEED_READS_PER_STEP = 5


def test_a_step_that_logs_nothing_reads_nothing_back(tmp_path, zh_text_document, monkeypatch):
    counts_dir = tmp_path / "counts"
    counts_dir.mkdir()
    monkeypatch.setenv("SYNC_COUNTS_DIR", str(counts_dir))
    args = pretrain_args(
        zh_text_document,
        tmp_path / "ckpt",
        train_iters=TRAIN_ITERS,
        log_interval=LOG_INTERVAL,
        eval_interval=0,
        eval_iters=1,
        save_interval=0,
    )
    args[0] = str(SUPPORT / "count_syncs_pretrain.py")
    run(args)
    for rank in (0, 1):
        counts = {int(step): sites for step, sites in json.loads((counts_dir / f"rank{rank}.json").read_text()).items()}
        # Step 1 sets things up (DeepSpeed's first step, the first batch); log steps read on purpose.
        quiet_steps = [s for s in range(2, TRAIN_ITERS + 1) if s % LOG_INTERVAL]
        for step in quiet_steps:
            ours = {site: n for site, n in counts.get(step, {}).items() if "megatron_zh/" in site}
            assert not ours, f"rank {rank}, step {step}: megatron_zh reads device values back: {ours}"
        deepspeed = [
            sum(n for site, n in counts.get(step, {}).items() if "megatron_zh/" not in site) for step in quiet_steps
        ]
        print(f"rank {rank}: DeepSpeed's reads per quiet step {deepspeed}: {counts.get(quiet_steps[0])}")
        assert deepspeed == [DEEPSPEED_READS_PER_STEP] * len(quiet_steps), f"rank {rank}: {counts}"
        # The counter works: a log step reads the window's losses (one all-reduce, one read) and more.
        log_step = {site: n for site, n in counts[LOG_INTERVAL].items() if "megatron_zh/" in site}
        assert any("training/loop.py" in site or "process_group.py" in site for site in log_step), log_step

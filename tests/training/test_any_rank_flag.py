"""process_group.AnyRankFlag: the ranks agree on a stop request one poll late, from host memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_zh.training.distributed.process_group import AnyRankFlag

REPO = Path(__file__).resolve().parents[2]


def test_one_process_answers_each_poll_with_the_previous_one():
    flag = AnyRankFlag()
    assert [flag.poll(f) for f in (False, True, False, False)] == [False, False, True, False]
    assert flag.poll(True) is False
    assert flag.close() is True  # the last poll's answer, not lost
    assert flag.close() is False  # nothing pending any more
    assert flag.poll(False) is False  # polling again starts afresh


RANK = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from megatron_zh.training.distributed.process_group import AnyRankFlag

    store, rank = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    flag = AnyRankFlag()
    # rank 1 alone is signalled at poll 2; rank 0 at the last poll, answered by close()
    answers = [flag.poll(rank == 1 and i == 2) for i in range(5)] + [flag.poll(rank == 0)]
    print(json.dumps({"answers": answers, "closed": flag.close()}))
    dist.destroy_process_group()
    """
)


@pytest.mark.integration
def test_two_ranks_get_the_same_answer_at_the_same_poll(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(tmp_path / "store"), str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = [json.loads(rank.communicate(timeout=120)[0].strip().splitlines()[-1]) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0]
    expected = {"answers": [False, False, False, True, False, False], "closed": True}
    assert results == [expected, expected]

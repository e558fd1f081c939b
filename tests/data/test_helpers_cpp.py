"""megatron_zh._helpers against a plain NumPy reference and megatron-core's helpers_cpp."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

from megatron_zh import _helpers
from megatron_zh.data.datasets import helpers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets import helpers_cpp as megatron_helpers


# ------------------------------------------------------------------------------------------------
# NumPy references, written from the definitions rather than from either C++ loop.


def reference_sample_idx(sizes, document_idx, seq_length, num_epochs, tokens_per_epoch, drop_last, extra):
    """Row s locates stream position s*seq_length: the document holding token q = s*seq - 1 + extra,
    at offset q - start + 1 - extra; a kept partial last sample ends at the last document's end."""
    usable = num_epochs * tokens_per_epoch - extra
    num_samples = usable // seq_length if drop_last else -(-usable // seq_length)
    lengths = sizes[document_idx].astype(np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    q = np.arange(1, num_samples + 1, dtype=np.int64) * seq_length - 1 + extra
    inside = q < ends[-1]
    j = np.searchsorted(ends, q[inside], side="right")
    rows = np.zeros((num_samples + 1, 2), dtype=np.int64)
    rows[1:][inside, 0] = j
    rows[1:][inside, 1] = q[inside] - starts[j] + 1 - extra
    rows[1:][~inside] = (len(document_idx) - 1, sizes[document_idx[-1]] - extra)
    return rows


def reference_blending(weights, size):
    weights = np.asarray(weights, dtype=np.float64)
    taken = np.zeros(len(weights), dtype=np.int64)
    index = np.zeros(size, dtype=np.int16)
    sample = np.zeros(size, dtype=np.int64)
    for i in range(size):
        best = int(np.argmax(weights * max(float(i), 1.0) - taken))  # argmax: first maximum wins ties
        index[i], sample[i] = best, taken[best]
        taken[best] += 1
    return index, sample


def reference_exhaustive_blending(sizes):
    sizes = np.asarray(sizes, dtype=np.int64)
    weights = sizes / float(sizes.sum())
    taken = np.zeros(len(sizes), dtype=np.int64)
    index, sample = [], []
    while (taken < sizes).any():
        errors = weights * max(float(len(index)), 1.0) - taken
        errors[taken == sizes] = -np.inf
        best = int(np.argmax(errors))
        index.append(best)
        sample.append(taken[best])
        taken[best] += 1
    return np.array(index, dtype=np.int16), np.array(sample, dtype=np.int64)


def random_corpus(rng, num_docs, max_len, allow_empty):
    low = 0 if allow_empty else 1
    sizes = rng.integers(low, max_len + 1, num_docs).astype(np.int32)
    sizes[rng.random(num_docs) < 0.2] = 1  # plenty of length-1 documents
    if sizes.sum() < 2:
        sizes[0] = 2
    return sizes


def epochs_of(rng, num_docs, num_epochs):
    document_idx = np.tile(np.arange(num_docs, dtype=np.int32), num_epochs)
    rng.shuffle(document_idx)
    return document_idx


# ------------------------------------------------------------------------------------------------
# build_sample_idx


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("extra", [1, 0])
def test_sample_idx_matches_reference_and_megatron(drop_last, extra):
    rng = np.random.default_rng(1000 * drop_last + extra)
    checked = 0
    for _ in range(150):
        num_docs = int(rng.integers(1, 60))
        sizes = random_corpus(rng, num_docs, int(rng.choice([3, 20, 300])), allow_empty=True)
        num_epochs = int(rng.integers(1, 4))
        document_idx = epochs_of(rng, num_docs, num_epochs)
        if not drop_last and extra and sizes[document_idx[-1]] == 0:
            continue  # megatron-core marks this sample's end at offset -1; not a valid corpus layout
        seq_length = int(rng.choice([2, 3, 7, 16, 64, 512]))  # both shorter and longer than documents
        tokens_per_epoch = int(sizes.sum())
        args = (sizes, document_idx, seq_length, num_epochs, tokens_per_epoch, drop_last, extra)
        ours = _helpers.build_sample_idx_int32(*args)
        ours64 = _helpers.build_sample_idx_int64(*args)
        theirs = megatron_helpers.build_sample_idx_int32(*args)
        assert ours.dtype == np.int32 and ours64.dtype == np.int64
        np.testing.assert_array_equal(ours, reference_sample_idx(*args))
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(ours64, ours)
        checked += 1
    assert checked > 100


def test_sample_idx_large_random_matches_megatron():
    rng = np.random.default_rng(7)
    sizes = random_corpus(rng, 200_000, 2_000, allow_empty=False)
    document_idx = epochs_of(rng, len(sizes), 3)
    for seq_length in (128, 1024):
        args = (sizes, document_idx, seq_length, 3, int(sizes.sum()), True, 1)
        ours = _helpers.build_sample_idx_int32(*args)
        np.testing.assert_array_equal(ours, megatron_helpers.build_sample_idx_int32(*args))
        np.testing.assert_array_equal(ours, reference_sample_idx(*args))


def test_sample_idx_keeps_exact_count_where_megatron_rounds_through_float():
    # One document of 2**25 + 2 tokens: (T - 1) / 1024 = 32768.001 -> 32769 samples when the last
    # partial one is kept. megatron-core computes it through a float32 and gets 32768.
    sizes = np.array([2**25 + 2], dtype=np.int32)
    document_idx = np.zeros(1, dtype=np.int32)
    args = (sizes, document_idx, 1024, 1, 2**25 + 2, False, 1)
    ours = _helpers.build_sample_idx_int32(*args)
    assert ours.shape == (32769 + 1, 2)
    np.testing.assert_array_equal(ours, reference_sample_idx(*args))
    theirs = megatron_helpers.build_sample_idx_int32(*args)
    assert theirs.shape == (32768 + 1, 2)
    np.testing.assert_array_equal(ours[:-1], theirs)


def test_wrapper_picks_int32_then_int64(monkeypatch):
    sizes = np.array([5, 9, 4], dtype=np.int32)
    document_idx = np.array([2, 0, 1], dtype=np.int32)
    small = helpers.build_sample_idx(sizes, document_idx, 4, 1, 18)
    assert small.dtype == np.int32
    monkeypatch.setattr(helpers, "_INT32_MAX", 2)  # pretend the document index no longer fits int32
    large = helpers.build_sample_idx(sizes, document_idx, 4, 1, 18)
    assert large.dtype == np.int64
    np.testing.assert_array_equal(small, large)
    np.testing.assert_array_equal(
        small, megatron_helpers.build_sample_idx_int32(sizes, document_idx, 4, 1, 18, True, 1)
    )


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(sizes=np.array([5, 3, 4], dtype=np.int64)), TypeError, "sizes must have dtype int32"),
        (dict(document_idx=[0, 1, 2]), TypeError, "document_idx must be a numpy.ndarray"),
        (dict(document_idx=np.arange(6, dtype=np.int32)[::2]), ValueError, "C-contiguous"),
        (dict(document_idx=np.zeros((1, 3), dtype=np.int32)), ValueError, "must be 1-D"),
        (dict(document_idx=np.array([0, 3, 2], dtype=np.int32)), IndexError, r"document_idx\[1\] = 3 is out of range"),
        (dict(document_idx=np.array([0, -1, 2], dtype=np.int32)), IndexError, "out of range"),
        (dict(sizes=np.array([5, -3, 4], dtype=np.int32)), ValueError, "negative"),
        (dict(tokens_per_epoch=40), ValueError, "fewer than num_epochs"),
        (dict(seq_length=1), ValueError, "seq_length must be at least 2"),
        (dict(num_epochs=0), ValueError, "num_epochs"),
        (dict(extra=2), ValueError, "add_extra_token_to_sequence"),
        (dict(document_idx=np.zeros(0, dtype=np.int32)), ValueError, "empty"),
    ],
)
def test_sample_idx_rejects_bad_input(change, error, message):
    args = dict(
        sizes=np.array([5, 3, 4], dtype=np.int32),
        document_idx=np.array([0, 1, 2], dtype=np.int32),
        seq_length=4,
        num_epochs=1,
        tokens_per_epoch=12,
        drop_last=True,
        extra=1,
    )
    args.update(change)
    with pytest.raises(error, match=message):
        _helpers.build_sample_idx_int32(*args.values())


def test_sample_idx_accepts_read_only_memmap(tmp_path):
    sizes = np.array([7, 1, 30, 2], dtype=np.int32)
    np.save(tmp_path / "sizes.npy", sizes)
    mapped = np.load(tmp_path / "sizes.npy", mmap_mode="r")
    document_idx = np.array([3, 1, 0, 2], dtype=np.int32)
    np.testing.assert_array_equal(
        _helpers.build_sample_idx_int32(mapped, document_idx, 5, 1, 40, True, 1),
        megatron_helpers.build_sample_idx_int32(sizes, document_idx, 5, 1, 40, True, 1),
    )


# ------------------------------------------------------------------------------------------------
# Blending


def test_blending_indices_match_reference_and_megatron():
    rng = np.random.default_rng(3)
    for trial in range(40):
        num_datasets = int(rng.integers(1, 13))  # up to 8 take the fixed-size path, more the general one
        weights = rng.random(num_datasets) + (0.0 if trial % 4 else 1e-3)
        weights = weights / weights.sum()
        if trial % 5 == 0:
            weights = np.full(num_datasets, 1.0 / num_datasets)  # exact ties
        size = int(rng.integers(0, 3000))
        ours = (np.zeros(size, np.int16), np.zeros(size, np.int64))
        theirs = (np.zeros(size, np.int16), np.zeros(size, np.int64))
        _helpers.build_blending_indices(*ours, weights, num_datasets, size, False)
        megatron_helpers.build_blending_indices(*theirs, weights, num_datasets, size, False)
        expected = reference_blending(weights, size)
        for a, b, c in zip(ours, theirs, expected):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


def test_blending_accepts_weight_list_like_megatron_callers():
    ours = (np.zeros(10, np.int16), np.zeros(10, np.int64))
    _helpers.build_blending_indices(*ours, [0.7, 0.3], 2, 10, False)
    np.testing.assert_array_equal(ours[0], reference_blending([0.7, 0.3], 10)[0])
    assert np.bincount(ours[0]).tolist() == [7, 3]


def test_exhaustive_blending_matches_reference_and_megatron():
    rng = np.random.default_rng(4)
    for trial in range(40):
        num_datasets = int(rng.integers(1, 13))
        sizes = rng.integers(1, 300, num_datasets)
        if trial % 6 == 0:
            sizes[:] = sizes[0]  # ties
        total = int(sizes.sum())
        ours = (np.zeros(total, np.int16), np.zeros(total, np.int64))
        theirs = (np.zeros(total, np.int16), np.zeros(total, np.int64))
        _helpers.build_exhaustive_blending_indices(*ours, sizes.tolist(), num_datasets)
        megatron_helpers.build_exhaustive_blending_indices(*theirs, sizes, num_datasets)
        expected = reference_exhaustive_blending(sizes)
        for a, b, c in zip(ours, theirs, expected):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        assert np.bincount(ours[0], minlength=num_datasets).tolist() == sizes.tolist()


def _outputs(index_length=5, sample_length=5, index_dtype=np.int16):
    return np.zeros(index_length, index_dtype), np.zeros(sample_length, np.int64)


@pytest.mark.parametrize(
    "outputs, weights, num_datasets, error, message",
    [
        (_outputs(index_dtype=np.int32), [1.0], 1, TypeError, "dataset_index must have dtype int16"),
        (_outputs(sample_length=4), [1.0], 1, ValueError, "fewer than the 5"),
        (_outputs(), [0.5, 0.5], 3, ValueError, "num_datasets is 3"),
        (_outputs(), [0.5, float("nan")], 2, ValueError, "finite"),
        ((np.zeros(10, np.int16)[::2], np.zeros(5, np.int64)), [1.0], 1, ValueError, "C-contiguous"),
        (_outputs(), [], 0, ValueError, "num_datasets must be in"),
    ],
)
def test_blending_rejects_bad_input(outputs, weights, num_datasets, error, message):
    with pytest.raises(error, match=message):
        _helpers.build_blending_indices(*outputs, weights, num_datasets, 5, False)


@pytest.mark.parametrize(
    "outputs, sizes, message",
    [
        (_outputs(), [0, 5], "must be positive"),
        (_outputs(), [2.5, 2], "whole number"),
        (_outputs(index_length=4), [3, 2], "fewer than the 5"),
    ],
)
def test_exhaustive_blending_rejects_bad_input(outputs, sizes, message):
    with pytest.raises(ValueError, match=message):
        _helpers.build_exhaustive_blending_indices(*outputs, sizes, 2)


def test_blending_output_must_be_writeable():
    read_only = np.zeros(5, np.int16)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _helpers.build_blending_indices(read_only, np.zeros(5, np.int64), [1.0], 1, 5, False)


# ------------------------------------------------------------------------------------------------
# The GIL is released while an index is built.


def _longest_stall_during(call) -> tuple[float, float]:
    """Run `call` in a thread while this thread spins in Python; return (this thread's longest
    pause, the call's duration). A call that holds the GIL pauses this thread for all of it."""
    done = threading.Event()
    duration = []

    def worker():
        time.sleep(0.02)  # let the spinning loop below get going first
        begin = time.perf_counter()
        call()
        duration.append(time.perf_counter() - begin)
        done.set()

    thread = threading.Thread(target=worker)
    longest, last = 0.0, time.perf_counter()
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    longest = max(longest, time.perf_counter() - last)  # a pause can end right as the call returns
    thread.join()
    return longest, duration[0]


def test_gil_released_while_building():
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 64, 6_000_000).astype(np.int32)
    document_idx = np.arange(len(sizes), dtype=np.int32)
    rng.shuffle(document_idx)
    args = (sizes, document_idx, 64, 1, int(sizes.sum()), True, 1)
    # Control: megatron-core holds the GIL for the whole call, so this thread stalls throughout.
    their_stall, their_call = _longest_stall_during(lambda: megatron_helpers.build_sample_idx_int32(*args))
    our_stall, our_call = _longest_stall_during(lambda: _helpers.build_sample_idx_int32(*args))
    assert their_stall > 0.5 * their_call, "the control did not observe a held GIL"
    assert our_call > 0.03, "the build was too quick to observe"
    assert our_stall < 0.5 * our_call, (our_stall, our_call, their_stall, their_call)

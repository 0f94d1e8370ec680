"""DeviceBatches: the loop's one-ahead fetch keeps the order of the stream and loses nothing."""

from __future__ import annotations

import pytest
import torch

from cellmap_train.engine.prefetch import DeviceBatches
from cellmap_train.data.label_transfer import UNKNOWN


def stream(n: int):
    for i in range(n):
        yield torch.full((1,), float(i)), torch.full((1,), -float(i))


def test_batches_come_in_stream_order_whether_prefetched_or_not():
    batches = DeviceBatches(stream(5), torch.device("cpu"))
    seen = [next(batches)]
    batches.prefetch()
    batches.prefetch()  # a second call before next() must not skip a batch
    seen += [next(batches), next(batches)]
    seen += list(batches)
    assert [int(raw) for raw, _ in seen] == [0, 1, 2, 3, 4]
    assert all(int(target) == -int(raw) for raw, target in seen)


def test_prefetch_pulls_exactly_one_batch_ahead():
    pulled = []

    def counting():
        for i, batch in enumerate(stream(10)):
            pulled.append(i)
            yield batch

    batches = DeviceBatches(counting(), torch.device("cpu"))
    next(batches)
    assert pulled == [0]
    batches.prefetch()
    assert pulled == [0, 1]


def test_the_end_of_a_finite_stream_is_stop_iteration():
    batches = DeviceBatches(stream(1), torch.device("cpu"))
    next(batches)
    with pytest.raises(StopIteration):
        batches.prefetch()


def test_uint8_labels_become_float_with_nan_at_unknown_and_every_other_value_exact():
    sent = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)  # BinarizeLabels gives 0, 1, UNKNOWN; any value maps
    raw = torch.zeros(1, 1, 16, 16)
    _, received = next(DeviceBatches(iter([(raw, sent)]), torch.device("cpu")))
    assert received.dtype == torch.float32
    assert torch.isnan(received).flatten().tolist() == [v == UNKNOWN for v in range(256)]
    assert received.flatten()[:UNKNOWN].tolist() == list(range(UNKNOWN))

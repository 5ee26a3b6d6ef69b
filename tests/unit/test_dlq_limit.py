from __future__ import annotations

import pytest

from cdr.ingest.dlq import DlqLimit, DlqLimitExceeded


def test_scattered_poison_is_tolerated() -> None:
    limit = DlqLimit(max_ratio=0.5, window=100, min_messages=10)
    for _ in range(50):
        limit.observe("t", 0, [False] * 9 + [True])


def test_mostly_bad_partition_stops() -> None:
    limit = DlqLimit(max_ratio=0.5, window=100, min_messages=10)
    limit.observe("t", 0, [False] * 50)
    with pytest.raises(DlqLimitExceeded, match=r"t\[0\]"):
        limit.observe("t", 0, [True] * 60)


def test_partitions_are_judged_apart() -> None:
    limit = DlqLimit(max_ratio=0.5, window=100, min_messages=10)
    limit.observe("t", 0, [False] * 100)
    with pytest.raises(DlqLimitExceeded, match=r"t\[1\]"):
        limit.observe("t", 1, [True] * 20)


def test_too_few_messages_to_judge() -> None:
    limit = DlqLimit(max_ratio=0.5, window=100, min_messages=10)
    limit.observe("t", 0, [True] * 9)

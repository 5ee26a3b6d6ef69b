"""How an export cuts the time axis into reads of about the same size."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from cdr.model.record import API_FIELDS
from cdr.store.queries import _API_COLUMNS, export_windows

HOUR = 3600


def _in(window: tuple[datetime | None, datetime | None], hour: int) -> bool:
    moment = datetime.fromtimestamp(hour, tz=UTC)
    low, high = window
    return (low is None or moment >= low) and (high is None or moment < high)


def test_nothing_counted_is_one_window_over_all_time() -> None:
    assert export_windows([], 20_000) == [(None, None)]


def test_hours_are_packed_up_to_the_target_and_a_busy_hour_stands_alone() -> None:
    hours = [(0, 8), (HOUR, 8), (2 * HOUR, 8), (3 * HOUR, 50), (4 * HOUR, 1)]
    windows = export_windows(hours, 20)
    per_window = [sum(n for hour, n in hours if _in(w, hour)) for w in windows]
    assert per_window == [16, 8, 50, 1]


@given(st.lists(st.integers(min_value=1, max_value=5_000), max_size=60), st.integers(min_value=1, max_value=10_000))
def test_windows_cover_all_time_in_order_and_hold_at_most_the_target(counts: list[int], target: int) -> None:
    hours = [(i * HOUR * 3, n) for i, n in enumerate(counts)]  # gaps between counted hours too
    windows = export_windows(hours, target)
    assert windows[0][0] is None and windows[-1][1] is None
    assert all(a[1] == b[0] for a, b in pairwise(windows))  # contiguous, no overlap
    for window in windows:
        inside = [n for hour, n in hours if _in(window, hour)]
        assert sum(inside) <= target or len(inside) == 1
    assert sum(sum(1 for hour, _ in hours if _in(w, hour)) for w in windows) == len(hours)


def test_the_export_columns_are_the_api_fields_in_order() -> None:
    assert tuple(name for name, _ in _API_COLUMNS) == API_FIELDS

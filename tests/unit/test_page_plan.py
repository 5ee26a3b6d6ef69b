"""A page and its total from per-month counts (cdr.store.queries.page_plan): the months
it names hold exactly the page's rows, at the offset it names."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from cdr.store.queries import month_window, page_plan

_MONTHS = st.dictionaries(
    st.integers(min_value=2019, max_value=2031).flatmap(lambda y: st.integers(1, 12).map(lambda m: y * 100 + m)),
    st.integers(min_value=0, max_value=40),
    max_size=12,
)


@given(_MONTHS, st.integers(min_value=0, max_value=500), st.integers(min_value=1, max_value=60), st.booleans())
def test_the_plan_reads_exactly_the_page(months: dict[int, int], offset: int, limit: int, desc: bool) -> None:
    # Every row as (month, its index within the month), in list order.
    rows = [(m, i) for m in sorted(months, reverse=desc) for i in range(months[m])]
    plan = page_plan([(str(m), n) for m, n in months.items()], offset=offset, limit=limit, desc=desc)
    assert plan.total == len(rows)
    page = rows[offset : offset + limit]
    if not page:
        assert plan.window is None
        return
    assert plan.window is not None
    low, high = plan.window
    assert low is not None and high is not None
    inside = [r for r in rows if low <= datetime(r[0] // 100, r[0] % 100, 1, tzinfo=UTC) < high]
    assert inside[plan.offset : plan.offset + limit] == page
    # Only the months the page touches.
    first, last = sorted((page[0][0], page[-1][0]))
    assert (low, high) == (month_window(first)[0], month_window(last)[1])


def test_month_window_crosses_the_year() -> None:
    assert month_window(202412) == (datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    assert month_window(202501) == (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))

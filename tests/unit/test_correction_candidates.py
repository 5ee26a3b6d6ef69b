"""Which rows of a batch the ingestor resolves against the stored versions
(cdr.ingest.corrections): found with Arrow compute, checked here against plain Python
over generated batches."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr.ingest.corrections import _candidates

GRACE_MS = 10_000
IDS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(4)]
TENANTS = ["a.example", "b.example"]

rows_st = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.sampled_from(IDS),
        st.sampled_from([0, 60_000]),  # time_started
        st.integers(-5_000, 30_000),  # emitted_at - time_ended
    ),
    min_size=1,
    max_size=12,
)


def _table(rows: list[tuple[str, str, int, int]]) -> pa.Table:
    ms = pa.timestamp("ms", tz="UTC")
    return pa.table(
        {
            "tenant_id": [t for t, _, _, _ in rows],
            "id": [i for _, i, _, _ in rows],
            "time_started": pa.array([s for _, _, s, _ in rows], pa.int64()).cast(ms),
            "time_ended": pa.array([s + 1_000 for _, _, s, _ in rows], pa.int64()).cast(ms),
            "emitted_at": pa.array([s + 1_000 + lag for _, _, s, lag in rows], pa.int64()).cast(ms),
        }
    )


@settings(deadline=None)  # the first call loads Arrow compute kernels (~1 s)
@given(rows_st)
def test_the_candidates_are_every_row_of_a_call_late_or_at_several_start_times(
    rows: list[tuple[str, str, int, int]],
) -> None:
    late = {(t, i) for t, i, _, lag in rows if lag < 0 or lag > GRACE_MS}
    starts: dict[tuple[str, str], set[int]] = {}
    for t, i, s, _ in rows:
        starts.setdefault((t, i), set()).add(s)
    moved = {key for key, found in starts.items() if len(found) > 1}
    want = [(t, i) in late | moved for t, i, _, _ in rows]

    got = _candidates(_table(rows), GRACE_MS)

    if not any(want):
        assert got is None
    else:
        assert got is not None
        assert got.to_pylist() == want

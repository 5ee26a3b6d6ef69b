"""An item's times in the reader's zone, made in Python for the hub's changes (streams,
webhooks): the same text as datetime in that zone, whatever the zone and the instant,
daylight-saving changes and the odd offsets of the past included; and the version in UTC."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cdr.store.feed import Change

ZONES = sorted(zoneinfo.available_timezones())
# 1938-2100; the quarter hours around daylight-saving changes drawn on purpose too.
INSTANTS = st.integers(-1_000_000_000_000, 4_102_444_800_000)
CHANGES = st.sampled_from(
    [1_711_846_800_000, 1_729_990_800_000, 1_710_054_000_000, 1_730_613_600_000, 1_696_089_600_000]
).flatmap(lambda at: st.integers(at - 1_800_000, at + 1_800_000))


def _shown(ms: int, zone: zoneinfo.ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=zone).strftime("%Y-%m-%d %H:%M:%S")


@settings(max_examples=3_000, deadline=None)
# Liberia's offset changed inside a quarter hour of UTC (-0:44:30 -> 0:00, 1972-01-07): that
# quarter hour is not cached, its times are shown through datetime, on either side.
@example(zone="Africa/Monrovia", started=63_592_200_000, answered=63_593_099_000)
@given(zone=st.sampled_from(ZONES), started=st.one_of(INSTANTS, CHANGES), answered=st.none() | INSTANTS)
def test_times_shown_in_a_zone_are_what_datetime_shows(zone: str, started: int, answered: int | None) -> None:
    tz = zoneinfo.ZoneInfo(zone)
    change = Change("t", "id", "sip", "NORMAL_CLEARING", 1, 1, 1, "", "101", "1", "2", "", started, answered,
                    started + 61_999, "ANSWERED", started, 0, 0)  # fmt: skip
    item = change.render(tz)
    assert item["time_started"] == _shown(started, tz)
    assert item["time_answered"] == ("" if answered is None else _shown(answered, tz))
    assert item["time_ended"] == _shown(started + 61_999, tz)
    utc = datetime.fromtimestamp(started / 1000, tz=UTC)
    assert item["version"] == utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{started % 1000:03d}Z"

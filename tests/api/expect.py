"""Expected API answers computed in plain Python over the seeded events (independent of SQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
CODES = {"inbound": 1, "outbound": 2, "local": 3}


def _instant(text: str | int) -> datetime:
    if isinstance(text, int):
        from datetime import UTC

        return datetime.fromtimestamp(text, tz=UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=HCM)


def _local(text: str | int | None) -> str:
    return "" if text is None else _instant(text).astimezone(HCM).strftime("%Y-%m-%d %H:%M:%S")


def as_record(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": e["id"],
        "sip_call_id": e["sip_call_id"],
        "cause": e["cause"],
        "duration": e["duration"],
        "billsec": e["billsec"],
        "direction": CODES[e["direction"].lower()],
        "recording_url": e.get("recording_url") or "",
        "extension": e.get("extension") or "",
        "from_number": e["from_number"],
        "to_number": e["to_number"],
        "receive_dest": e.get("receive_dest") or "",
        "time_started": _local(e["time_started"]),
        "time_answered": _local(e.get("time_answered")),
        "time_ended": _local(e["time_ended"]),
        "status": e["status"].upper(),
    }


def _e164(number: str) -> str:
    try:
        parsed = phonenumbers.parse(number, "VN")
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _starts(prefix: str) -> set[str]:
    """The written forms of a Vietnamese number prefix: 09.. = 849.. = +849..."""
    if prefix.startswith("0") and len(prefix) > 1:
        return {prefix, "84" + prefix[1:], "+84" + prefix[1:]}
    if prefix.startswith("+84") and len(prefix) > 3:
        return {prefix, prefix[1:], "0" + prefix[3:]}
    return {prefix}


def _bound(text: str) -> datetime:
    if len(text) == 10:
        return datetime.fromisoformat(text + " 00:00:00").replace(tzinfo=HCM)
    return _instant(text)


def matches(e: dict[str, Any], params: dict[str, str]) -> bool:
    started, ended = _instant(e["time_started"]), _instant(e["time_ended"])
    checks = {
        "start_date": lambda v: started >= _bound(v),
        "end_date": lambda v: started <= _bound(v),
        "start_date_ended": lambda v: ended >= _bound(v),
        "end_date_ended": lambda v: ended <= _bound(v),
        "duration": lambda v: e["duration"] == int(v),
        "min_duration": lambda v: e["duration"] > int(v),
        "max_duration": lambda v: e["duration"] <= int(v),
        "cause": lambda v: e["cause"] == v,
        "phone_prefix": lambda v: any(n.startswith(f) for n in (e["from_number"], e["to_number"]) for f in _starts(v)),
        "extension": lambda v: (e.get("extension") or "") == v,
        "recordingfile": lambda v: bool(e.get("recording_url")) and e["recording_url"].rsplit("/", 1)[-1] == v,
        "status": lambda v: e["status"].upper() == v.upper(),
        "phone": lambda v: _e164(v) in (_e164(e["from_number"]), _e164(e["to_number"])),
        "direction": lambda v: CODES[e["direction"]] == (int(v) if v.isdigit() else CODES[v.lower()]),
    }
    return all(checks[name](value) for name, value in params.items() if name in checks)


def clickhouse_uuid_key(text: str) -> tuple[int, int]:
    """ClickHouse orders UUIDs by their second 64-bit half, then the first."""
    import uuid

    value = uuid.UUID(text).int
    return value & ((1 << 64) - 1), value >> 64


def sort_key(e: dict[str, Any]) -> tuple[datetime, tuple[int, int]]:
    return _instant(e["time_started"]), clickhouse_uuid_key(e["id"])


def expected(events: list[dict[str, Any]], tenant: str, params: dict[str, str]) -> list[dict[str, Any]]:
    chosen = [e for e in events if e["tenant_id"] == tenant and matches(e, params)]
    chosen.sort(key=sort_key)
    return [as_record(e) for e in chosen]

"""A PBX simulator: realistic call-ended events for a few tenants, at a chosen rate."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import orjson

from cdr.settings import CommonSettings, KafkaSettings

log = logging.getLogger(__name__)

_EXTENSIONS = [str(n) for n in range(101, 131)]
_RING_GROUPS = ["", "", "", "ringgroup-sales", "ringgroup-support", "queue-billing", "queue-vip"]
_MOBILE_PREFIXES = ["090", "091", "093", "096", "097", "098", "086", "089", "070", "079", "081", "088"]
_HOTLINES = ["19001919", "18006868", "02873001234", "02437123456"]
# status, cause, share
_OUTCOMES = [
    ("ANSWERED", "NORMAL_CLEARING", 0.62),
    ("NO ANSWER", "NO_ANSWER", 0.17),
    ("BUSY", "USER_BUSY", 0.11),
    ("FAILED", "CALL_REJECTED", 0.05),
    ("FAILED", "NO_ROUTE_DESTINATION", 0.03),
    ("NO ANSWER", "ORIGINATOR_CANCEL", 0.02),
]


def _mobile(rng: random.Random) -> str:
    number = rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**7):07d}"
    form = rng.random()
    if form < 0.7:
        return number  # national, as most Vietnamese PBXs log it
    if form < 0.85:
        return "84" + number[1:]
    return "+84" + number[1:]


def make_event(rng: random.Random, tenant: str, ended: datetime, *, emitted: datetime | None = None) -> dict[str, Any]:
    """One call-ended event as the PBX would publish it (a JSON-ready dict)."""
    status, cause = _pick_outcome(rng)
    direction = rng.choices(["inbound", "outbound", "local"], weights=[0.5, 0.4, 0.1])[0]
    extension = rng.choice(_EXTENSIONS)
    ring = rng.choice(_RING_GROUPS) if direction == "inbound" else ""
    if direction == "inbound":
        from_number, to_number = _mobile(rng), rng.choice(_HOTLINES)
    elif direction == "outbound":
        from_number, to_number = rng.choice(_HOTLINES), _mobile(rng)
    else:
        from_number, to_number = extension, rng.choice(_EXTENSIONS)
    ring_s = rng.randint(2, 30)
    talk_s = rng.randint(5, 900) if status == "ANSWERED" else 0
    duration = ring_s + talk_s
    started = ended - timedelta(seconds=duration)
    call_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    answered = started + timedelta(seconds=ring_s) if status == "ANSWERED" else None
    recording = (
        f"https://recording.{tenant}/{started:%Y/%m/%d}/{call_id}.wav"
        if status == "ANSWERED" and rng.random() < 0.8
        else None
    )
    return {
        "event": "call.ended",
        "schema_version": 1,
        "tenant_id": tenant,
        "emitted_at": (emitted or ended).isoformat(),
        "id": str(call_id),
        "sip_call_id": f"{rng.getrandbits(64):016x}@{tenant}" if rng.random() < 0.98 else "",
        "cause": cause,
        "duration": duration,
        "billsec": talk_s,
        "direction": direction,
        "recording_url": recording,
        "extension": extension,
        "from_number": from_number,
        "to_number": to_number,
        "receive_dest": ring or None,
        "time_started": started.isoformat(),
        "time_answered": answered.isoformat() if answered else None,
        "time_ended": ended.isoformat(),
        "status": status,
    }


# How a PBX writes its events (shares of all events). The document's own two examples
# differ: naive local times and a null receive_dest in one; an offset or UTC time, "" for
# a missing recording and receive_dest in the other. Absent optional fields are rarer.
TIME_STYLES = (("naive local", 0.5), ("local offset", 0.4), ("UTC Z", 0.1))
EMPTY_STYLES = (('""', 0.6), ("null", 0.25), ("absent", 0.15))


def pbx_event(rng: random.Random, tenant: str, ended: datetime, zone: tzinfo) -> dict[str, Any]:
    """``make_event`` written the ways real PBXs write it (``TIME_STYLES``, ``EMPTY_STYLES``
    for each missing recording, receive_dest and extension)."""
    event = make_event(rng, tenant, ended)
    style = _pick(rng, TIME_STYLES)
    for name in ("emitted_at", "time_started", "time_answered", "time_ended"):
        value = event[name]
        if value is None:
            continue
        moment = datetime.fromisoformat(value)
        if style == "naive local":
            event[name] = moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        elif style == "UTC Z":
            event[name] = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            event[name] = moment.astimezone(zone).isoformat()
    if event["direction"] == "inbound" and rng.random() < 0.05:
        event["extension"] = None  # the call never reached an extension
    for name in ("recording_url", "receive_dest", "extension"):
        if event[name] is None:
            empty = _pick(rng, EMPTY_STYLES)
            if empty == '""':
                event[name] = ""
            elif empty == "absent":
                del event[name]
    return event


def _pick(rng: random.Random, shares: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([name for name, _ in shares], weights=[share for _, share in shares])[0]


def _pick_outcome(rng: random.Random) -> tuple[str, str]:
    roll = rng.random()
    for status, cause, share in _OUTCOMES:
        if roll < share:
            return status, cause
        roll -= share
    return _OUTCOMES[0][0], _OUTCOMES[0][1]


async def simulate(
    kafka: KafkaSettings, common: CommonSettings, *, rate: float, count: int, tenants: list[str], seed: int | None
) -> int:
    """Publish events until ``count`` (0: forever) at about ``rate`` per second."""
    from aiokafka import AIOKafkaProducer

    if rate <= 0 or not tenants:
        raise ValueError("rate must be positive and at least one tenant given")
    rng = random.Random(seed)
    from cdr.kafka_security import kafka_client_options

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.kafka_bootstrap_servers, linger_ms=20, **kafka_client_options(kafka)
    )
    await producer.start()
    sent = 0
    started = time.monotonic()
    last_report = started
    try:
        while count == 0 or sent < count:
            event = pbx_event(rng, rng.choice(tenants), datetime.now(UTC).replace(microsecond=0), common.zone)
            await producer.send(kafka.kafka_topic, orjson.dumps(event), key=event["id"].encode())
            sent += 1
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                log.info("simulator progress", extra={"sent": sent})
        await producer.flush()
    except asyncio.CancelledError:
        pass
    finally:
        await producer.stop()
        log.info("simulator stopped", extra={"sent": sent})
    return 0

"""The call detail record as the API shows it: field order and direction codes."""

from __future__ import annotations

from enum import IntEnum


class Direction(IntEnum):
    """Call direction, with the codes of the customer's document (1 in, 2 out, 3 local)."""

    INBOUND = 1
    OUTBOUND = 2
    LOCAL = 3

    @classmethod
    def parse(cls, text: str) -> Direction:
        """A name (any case) or a code; ValueError otherwise."""
        value = text.strip()
        if value.isdigit():
            return cls(int(value))
        return cls[value.upper()]


# Fields of a CDR in the API, in the order of the customer's document.
API_FIELDS: tuple[str, ...] = (
    "id",
    "sip_call_id",
    "cause",
    "duration",
    "billsec",
    "direction",
    "recording_url",
    "extension",
    "from_number",
    "to_number",
    "receive_dest",
    "time_started",
    "time_answered",
    "time_ended",
    "status",
)

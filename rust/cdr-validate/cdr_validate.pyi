"""A batch of call-ended events (raw Kafka values) validated into the cdr table's Arrow columns."""

from typing import Any

class Columns:
    """The accepted rows: ``pyarrow.record_batch(columns)`` takes them (Arrow PyCapsule interface)."""

    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]: ...
    def __len__(self) -> int: ...

class Rules:
    """Naive times' rules, each ``(offset_us, since_us, until_us)``: the default and each
    listed tenant's; the longest call in seconds."""

    def __init__(
        self, default: tuple[int, int, int], tenants: dict[str, tuple[int, int, int]], max_call_s: int
    ) -> None: ...
    def validate(
        self, values: list[bytes], latest_us: int
    ) -> tuple[Columns, list[tuple[int, str, str]], list[tuple[int, str]]]:
        """The accepted rows (first column ``n``: each one's index in ``values``), the
        refused ``(index, field, reason)`` (field "" for the whole message or a rule
        across fields), and the ``(index, reason)`` left to the model."""

"""A bound on what one compressed Kafka record batch may inflate to, and a way past a
batch that cannot be read.

aiokafka decompresses a fetched record batch whole, inside its record reader, with no
limit: a 1 MB gzip batch of zeros inflates to ~1 GB, so anyone who can produce to the
topic could kill every ingestor, again on each restart (the batch is fetched again).
A batch in a codec the ingestor cannot decode (zstd, lz4 and snappy need a library we do
not ship) would stop ingest the same way, on an error instead of a kill.

``install`` puts a bounded gzip decoder into aiokafka's record readers (the compiled and
the pure-Python one) and wraps each fetched batch: a batch that inflates past the bound,
is corrupt, or uses another codec is not read; the fetcher gets one placeholder record
at the batch's last offset instead, with no value and the reason in a header. The
pipeline dead-letters it (``processor.precheck``), so the batch's offsets and the reason
are in the DLQ, and the commit after it moves the group past the batch. Nothing is read
into memory past the bound.

It patches aiokafka (pinned in pyproject.toml) where it has no hook: the decoder names in
its two record modules and the fetcher's ``PartitionRecords`` class. The bound is process
wide: the last ``install`` sets it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.errors import UnsupportedCodecError
from aiokafka.record import default_records as py_records

try:  # the compiled reader aiokafka uses when its extension is built (the wheels)
    from aiokafka.record._crecords import default_records as c_records
except ImportError:  # pragma: no cover - a source install without the extension
    c_records = None

from cdr.ingest.processor import UNREAD_HEADER

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_OTHER_CODECS = ("snappy", "lz4", "zstd")


class UnreadableBatch(Exception):
    """Why a compressed batch is not read."""


def bounded_gzip(limit: int) -> Callable[[Any], bytes]:
    """A gzip decoder (one or more members, as Java's reader takes) that stops at
    ``limit`` bytes of output instead of inflating the rest."""

    def decode(payload: Any) -> bytes:
        out = bytearray()
        data = bytes(payload)
        while data:
            inflater = zlib.decompressobj(_GZIP_WBITS)
            try:
                out += inflater.decompress(data, limit + 1 - len(out))
            except zlib.error as exc:
                raise UnreadableBatch(f"gzip data is corrupt ({exc})") from exc
            if len(out) > limit:
                raise UnreadableBatch(
                    f"gzip batch of {len(payload):,} bytes inflates past the {limit:,}-byte limit"
                    " (CDR_KAFKA_MAX_INFLATED_BATCH_BYTES)"
                )
            if not inflater.eof:
                raise UnreadableBatch("gzip data is truncated")
            data = inflater.unused_data
        return bytes(out)

    return decode


_GZIP_ONLY = (
    "this ingestor reads uncompressed and gzip batches only; set the PBX producer's compression to gzip or none"
)


def _not_read(codec: str) -> Callable[[Any], bytes]:
    # aiokafka refuses these itself while their library (cramjam) is absent, as it is
    # here; if it were installed, they would still not inflate without a bound.
    def decode(payload: Any) -> bytes:
        raise UnreadableBatch(f"{codec}-compressed batch of {len(payload):,} bytes: {_GZIP_ONLY}")

    return decode


@dataclass(frozen=True)
class Placeholder:
    """What the fetcher yields for an unread batch: the fields aiokafka's
    ``_consumer_record`` reads from a record."""

    offset: int
    timestamp: int
    headers: tuple[tuple[str, bytes], ...]
    timestamp_type: int = 0
    key: bytes | None = None
    value: bytes | None = None
    checksum: int | None = None


class _Batch:
    """One fetched batch; iterating it yields its records, or the placeholder when its
    data cannot be read (decoding happens on the first step)."""

    def __init__(self, batch: Any) -> None:
        self._batch = batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # aiokafka steps control batches by hand
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        try:
            records = iter(self._batch)
            first = next(records)
        except StopIteration:
            return
        except UnreadableBatch as exc:
            yield self._placeholder(str(exc))
            return
        except UnsupportedCodecError as exc:
            yield self._placeholder(f"{exc}: {_GZIP_ONLY}")
            return
        yield first
        # Not ``yield from``: the compiled batch refuses a second ``iter()``.
        while True:
            try:
                yield next(records)
            except StopIteration:
                return

    def _placeholder(self, why: str) -> Placeholder:
        batch = self._batch
        last = batch.next_offset - 1
        reason = f"record batch at offsets {batch.base_offset}-{last} was not read: {why}"
        return Placeholder(offset=last, timestamp=batch.max_timestamp, headers=((UNREAD_HEADER, reason.encode()),))


class _Batches:
    def __init__(self, records: Any) -> None:
        self._records = records

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> _Batch:
        return _Batch(self._records.next_batch())


class _BoundedPartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    def __init__(self, tp: Any, records: Any, *args: Any) -> None:
        super().__init__(tp, _Batches(records), *args)


def install(limit: int) -> None:
    """Bound every gzip batch this process's Kafka consumers read to ``limit`` bytes
    inflated, and turn unreadable batches into placeholders (idempotent)."""
    decoders: dict[str, Callable[[Any], bytes]] = {"gzip_decode": bounded_gzip(limit)}
    decoders.update({f"{codec}_decode": _not_read(codec) for codec in _OTHER_CODECS})
    for module in (py_records, c_records):
        if module is not None:
            for name, decode in decoders.items():
                setattr(module, name, decode)
    fetcher.PartitionRecords = _BoundedPartitionRecords

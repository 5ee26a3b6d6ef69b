"""The bound on inflating a fetched batch, through aiokafka's own record reader."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from cdr.ingest import inflate
from cdr.ingest.processor import UNREAD_HEADER, precheck

LIMIT = 1 << 20
_GZIP, _ZSTD = 1, 4
_ATTRIBUTES = 22  # low byte of a v2 batch's 16-bit attributes (the codec in its low 3 bits)


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    inflate.install(LIMIT)
    yield
    inflate.install(32 << 20)  # the default, for whatever else this process consumes


def _batch(values: list[bytes], codec: int = _GZIP, base: int = 100) -> bytearray:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_000 + i, key=None, value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    return data


def _read(data: bytes | bytearray) -> tuple[list[tuple[int, bytes | None, tuple[tuple[str, bytes], ...]]], int]:
    # check_crcs off: some batches below are altered after building.
    records = fetcher.PartitionRecords(
        TopicPartition("t", 0), MemoryRecords(bytes(data)), None, 0, None, None, False, 0
    )
    return [(r.offset, r.value, r.headers) for r in records], records.next_fetch_offset


def _reason(read: list[tuple[int, bytes | None, tuple[tuple[str, bytes], ...]]]) -> str:
    [(_, value, headers)] = read
    problem = precheck(value, 65_536, headers)
    assert problem is not None and problem.kind == "unread_batch"
    return problem.reason


def test_batches_within_the_bound_read_as_usual() -> None:
    values = [b'{"n": 1}', b"\x00" * (LIMIT // 2), b'{"n": 3}']
    read, next_offset = _read(_batch(values))
    assert [(o, v) for o, v, _ in read] == [(100, values[0]), (101, values[1]), (102, values[2])]
    assert next_offset == 103
    plain, _ = _read(_batch([b"x"], codec=0))
    assert [v for _, v, _ in plain] == [b"x"]


def test_a_batch_past_the_bound_is_one_placeholder_at_its_last_offset() -> None:
    read, next_offset = _read(_batch([b"a", b"\x00" * (4 * LIMIT), b"c"]))
    assert [offset for offset, _, _ in read] == [102] and next_offset == 103
    reason = _reason(read)
    assert "offsets 100-102" in reason and f"{LIMIT:,}-byte limit" in reason


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", "truncated"),
        ("corrupt", "corrupt"),
        ("zstd", "zstd compression codec not found: this ingestor reads uncompressed and gzip"),
    ],
)
def test_unreadable_batches_are_placeholders_naming_why(damage: str, expected: str) -> None:
    data = _batch([b'{"n": 1}' * 200, b'{"n": 2}'])
    body = 61  # a v2 batch's records start after its 61-byte header
    if damage == "truncated":
        compressed = bytes(data[body:])
        shorter = compressed[: len(compressed) // 2]
        data = data[:body] + shorter
        struct.pack_into(">i", data, 8, len(data) - 12)  # the batch length field
    elif damage == "corrupt":
        data[body + 12 : body + 20] = b"\xff" * 8
    else:
        data[_ATTRIBUTES] = (data[_ATTRIBUTES] & ~0x07) | _ZSTD
    read, next_offset = _read(data)
    assert next_offset == 102
    assert expected in _reason(read)


def test_several_gzip_members_count_together() -> None:
    decode = inflate.bounded_gzip(1_000)
    one = gzip.compress(b"x" * 600)
    assert decode(one) == b"x" * 600
    with pytest.raises(inflate.UnreadableBatch, match="1,000-byte limit"):
        decode(one + one)
    assert decode(gzip.compress(b"y" * 1_000)) == b"y" * 1_000


def test_a_tombstone_is_still_a_tombstone() -> None:
    problem = precheck(None, 65_536, (("other", b"x"),))
    assert problem is not None and problem.kind == "empty"
    assert UNREAD_HEADER.startswith("x-cdr-")


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_other_codecs_never_inflate_even_with_their_library_installed(codec: str) -> None:
    from aiokafka.record import default_records

    with pytest.raises(inflate.UnreadableBatch, match=f"{codec}-compressed batch of 3 bytes"):
        getattr(default_records, f"{codec}_decode")(b"abc")

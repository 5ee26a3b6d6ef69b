"""One stored form per phone number, so that a search matches a single value.

A PBX logs one number as ``0899888999`` (national), ``84899888999`` (international) or
``+84899888999``; the search must find all three with any of them (spec/API.md). The
ingestor stores beside each raw number (kept: the API returns what was sent) its E.164
form in the tenant's phone region, and a value that is not a phone number (an extension,
a short code) as it is. The API reads a query the same way (``canonical``), so both
sides meet on one value whatever the form.

phonenumbers decides it at ~60 µs a number (pure Python), ~8 s of CPU per second at the
ingest rate of two numbers per event. Cheaper paths (~1-2 µs) take the forms a PBX of
the region writes, from the region's own metadata (country code, national prefix,
possible lengths, the pattern of its national numbers), and give phonenumbers' answer
for them: ``+``, the country code and a national number of a possible length, kept as
is; the national prefix and a national number of a possible length, the prefix replaced
by ``+`` and the country code; the country code without ``+`` and what looks like a
national number of the region (while the whole does not), given its ``+``. A national
number that itself starts with the national prefix, one that starts with the
international dialling prefix (Japan's 010), a region that strips more than its prefix
(carrier codes, transform rules) and every other shape go to phonenumbers, each
distinct value once per process (a bounded memo: a hotline or an extension is on one
side of most calls). ``tests/unit/test_phones.py`` holds the fast paths to phonenumbers' answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

# Distinct numbers remembered per process: a ~100-byte entry, ~20 MB at most.
_MEMO_SIZE = 200_000


@dataclass(frozen=True)
class _Region:
    """What the fast paths need of one region's metadata."""

    code: str  # the country calling code, digits
    prefix: str  # the national (trunk) prefix, "" when the region has none
    lengths: frozenset[int]  # possible lengths of a national significant number
    idd: re.Pattern[str] | None  # the international dialling prefix (00; Japan's 010)
    national: re.Pattern[str]  # what a national significant number of the region looks like


@cache
def _region(region: str) -> _Region | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.general_desc is None:
        return None
    # A region that strips more than its prefix when it reads a national number (carrier
    # codes, a transform rule) takes phonenumbers' path for every number.
    if metadata.national_prefix_transform_rule is not None or metadata.national_prefix_for_parsing not in (
        None,
        metadata.national_prefix,
    ):
        return None
    return _Region(
        str(metadata.country_code),
        metadata.national_prefix or "",
        frozenset(metadata.general_desc.possible_length or ()),
        re.compile(metadata.international_prefix) if metadata.international_prefix else None,
        re.compile(metadata.general_desc.national_number_pattern or "(?!)"),
    )


@lru_cache(maxsize=_MEMO_SIZE)
def _parsed(number: str, region: str) -> str:
    """phonenumbers' E.164 of ``number`` read in ``region`` when it is a possible number,
    else ``number`` unchanged (as ``cdr.api.params.phone_variants`` reads a query)."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return number
    if not phonenumbers.is_possible_number(parsed):
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def canonical(number: str, region: str) -> str:
    """The one form of ``number`` that is stored and searched for (module docstring)."""
    meta = _region(region)
    if meta is not None and number.isascii():
        if number.startswith("+") and number[1:].isdigit():
            national = number[1 + len(meta.code) :]
            if (
                number.startswith(meta.code, 1)
                and len(national) in meta.lengths
                and not (meta.prefix and national.startswith(meta.prefix))
            ):
                return number
        elif (
            meta.prefix
            and number.startswith(meta.prefix)
            and number.isdigit()
            and not (meta.idd and meta.idd.match(number))
        ):
            national = number[len(meta.prefix) :]
            if len(national) in meta.lengths and not national.startswith(meta.prefix):
                return "+" + meta.code + national
        elif number.startswith(meta.code) and number.isdigit():
            # The country code without "+": phonenumbers takes it as one when what follows
            # looks like a national number of the region and the whole does not.
            national = number[len(meta.code) :]
            if (
                len(national) in meta.lengths
                and not (meta.prefix and national.startswith(meta.prefix))
                and meta.national.fullmatch(national)
                and not meta.national.fullmatch(number)
                and not (meta.idd and meta.idd.match(number))
            ):
                return "+" + number
    return _parsed(number, region)


@dataclass(frozen=True)
class PhoneRegions:
    """The region national numbers are read in, per tenant: ``by_tenant`` lists those
    whose region is not ``default``."""

    default: str = "VN"
    by_tenant: Mapping[str, str] | None = None

    def of(self, tenant: str) -> str:
        return (self.by_tenant or {}).get(tenant, self.default)


def with_canonical_numbers(rows: pa.Table, regions: PhoneRegions) -> pa.Table:
    """``rows`` (``cdr`` columns) with ``from_e164`` and ``to_e164`` appended: each distinct
    (number, region) of the batch read once (Arrow's dictionary encoding finds them), so
    the hotlines and extensions on one side of most calls cost nothing per row."""
    tenants = rows.column("tenant_id").combine_chunks()
    present = {tenant: regions.of(tenant) for tenant in pc.unique(tenants).to_pylist()}
    by_region = set(present.values())
    region_column = None
    if len(by_region) > 1:
        names = pa.array(list(present), pa.string())
        region_column = pa.array(list(present.values()), pa.string()).take(pc.index_in(tenants, value_set=names))
    for name in ("from", "to"):
        numbers = rows.column(f"{name}_number").combine_chunks()
        if region_column is None:
            region = next(iter(by_region), regions.default)
            encoded = pc.dictionary_encode(numbers)
            forms = [canonical(number, region) for number in encoded.dictionary.to_pylist()]
        else:
            # Region and number joined by a NUL, split at the first one (a region code has none).
            encoded = pc.dictionary_encode(pc.binary_join_element_wise(region_column, numbers, "\x00"))
            forms = [
                canonical(number, region)
                for region, number in (k.split("\x00", 1) for k in encoded.dictionary.to_pylist())
            ]
        column = pa.array(forms, pa.string()).take(encoded.indices)
        rows = rows.append_column(f"{name}_e164", column)
    return rows

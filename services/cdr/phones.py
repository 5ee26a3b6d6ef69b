"""One stored form per phone number, so that a search matches a single value.

A PBX logs one number as ``0899888999`` (national), ``84899888999`` (international) or
``+84899888999``; the search must find all three with any of them (spec/API.md). The
ingestor stores beside each raw number (kept: the API returns what was sent) its E.164
form in the tenant's phone region, and a value that is not a phone number (an extension,
a short code) as it is. The API reads a query the same way (``canonical``), so both
sides meet on one value whatever the form.

phonenumbers decides it at ~60 µs a number (pure Python), ~8 s of CPU per second at the
ingest rate of two numbers per event. Two cheaper paths (~1 µs) take the forms a PBX of
the region writes, from the region's own metadata (country code, national prefix,
possible lengths), and give phonenumbers' answer for them: ``+``, the country code and a
national number of a possible length, kept as is; the national prefix and a national
number of a possible length, the prefix replaced by ``+`` and the country code. A national
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

# Distinct numbers remembered per process: a ~100-byte entry, ~20 MB at most.
_MEMO_SIZE = 200_000


@dataclass(frozen=True)
class _Region:
    """What the fast paths need of one region's metadata."""

    code: str  # the country calling code, digits
    prefix: str  # the national (trunk) prefix, "" when the region has none
    lengths: frozenset[int]  # possible lengths of a national significant number
    idd: re.Pattern[str] | None  # the international dialling prefix (00; Japan's 010)


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
    """``rows`` (``cdr`` columns) with ``from_e164`` and ``to_e164`` appended."""
    tenants = rows.column("tenant_id").to_pylist()
    region_of = {tenant: regions.of(tenant) for tenant in set(tenants)}
    for name in ("from", "to"):
        numbers = rows.column(f"{name}_number").to_pylist()
        # Per distinct (number, region) in the batch: one dictionary look-up a row.
        seen: dict[tuple[str, str], str] = {}
        out = []
        for tenant, number in zip(tenants, numbers, strict=True):
            key = (number, region_of[tenant])
            form = seen.get(key)
            if form is None:
                form = seen[key] = canonical(*key)
            out.append(form)
        rows = rows.append_column(f"{name}_e164", pa.array(out, pa.string()))
    return rows

"""The tenant directory file (``CDR_TENANTS_FILE``), read by both services.

The API takes each tenant's tokens, timezone, phone region and rate limit from it
(``cdr.api.tenants``); the ingestor takes each tenant's timezone, to read the naive
timestamps of that tenant's PBX (``ZoneDirectory``). Here: the file's one parser and
the stamp that tells a changed file (a mounted Secret is swapped by a symlink), so
neither service imports the other.

    tenants:
      acme.vn:
        tokens: [<sha256 hex of a token>, <sha256 hex of the next one>]
        timezone: Asia/Ho_Chi_Minh
        phone_region: VN
        rate_limit_per_s: 50
        rate_limit_burst: 100
        webhooks:                      # cdr notify (README, "Webhooks")
          - name: crm
            url: https://crm.acme.vn/hooks/cdr
            secrets: [whsec_<base64>]  # two during a rotation: both sign
            filters: {direction: inbound, status: ANSWERED}
            enabled: true
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import orjson
import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdr.model.record import Direction
from cdr.phones import PhoneRegions
from cdr.settings import SHA256_HEX, TENANT_ID, SettingsError, known_timezone

log = logging.getLogger(__name__)

WEBHOOK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SECRET = re.compile(r"^whsec_[A-Za-z0-9+/]+={0,2}$")
MAX_WEBHOOKS = 20  # per tenant: each is a task and a state row in `cdr notify`


class WebhookFilters(BaseModel):
    """The change feed's filters, by its parameter names (as GET /v1/cdr/changes reads them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    direction: int | None = None
    status: str | None = None
    extension: str | None = None
    cause: str | None = None

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, value: object) -> int | None:
        if value is None:
            return None
        try:
            return int(Direction.parse(str(value)))
        except (KeyError, ValueError):
            raise ValueError("direction is inbound, outbound, local or 1, 2, 3") from None

    @field_validator("status")
    @classmethod
    def _status(cls, value: str | None) -> str | None:
        return None if value is None else value.upper()


class WebhookEntry(BaseModel):
    """One endpoint `cdr notify` POSTs the tenant's changes to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str = Field(max_length=2048)
    secrets: list[str] = Field(min_length=1, max_length=4)
    filters: WebhookFilters = WebhookFilters()
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not WEBHOOK_NAME.fullmatch(value):
            raise ValueError("a webhook name is 1-63 of a-z, 0-9, '_', '-', starting with a letter or digit")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a webhook url is http(s)://host[:port][/path]")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a webhook url carries no credentials (sign with secrets instead)")
        if parts.fragment:
            raise ValueError("a webhook url has no #fragment")
        try:
            parts.port  # noqa: B018 -- raises on a port out of range
        except ValueError:
            raise ValueError("a webhook url's port is 1-65535") from None
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        for secret in value:
            key = secret.removeprefix("whsec_")
            if not _SECRET.fullmatch(secret) or len(key) % 4:
                raise ValueError("each secret is whsec_ followed by base64 (the Standard Webhooks form)")
            if not 24 <= len(base64.b64decode(key)) <= 64:
                raise ValueError("a secret's key is 24 to 64 bytes (Standard Webhooks)")
        return value


class TenantEntry(BaseModel):
    """One tenant of the file, as written (absent fields: the service-wide settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[str] = Field(min_length=1)
    timezone: str | None = None
    phone_region: str | None = None
    rate_limit_per_s: float | None = Field(None, ge=0)
    rate_limit_burst: int | None = Field(None, ge=1)
    webhooks: list[WebhookEntry] = Field(default_factory=list, max_length=MAX_WEBHOOKS)

    @model_validator(mode="after")
    def _unique_webhook_names(self) -> TenantEntry:
        names = [hook.name for hook in self.webhooks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"webhooks: the name {name!r} is used twice")
        return self

    @field_validator("tokens")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        digests = [token.strip().lower() for token in value]
        for digest in digests:
            if not SHA256_HEX.fullmatch(digest):
                raise ValueError("each token is the SHA-256 hex digest of a token (64 hex digits), never the token")
        return digests

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else known_timezone(value)

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {value!r} (an ISO 3166 code such as VN)")
        return None if value is None else value.upper()


def read_tenants_file(path: Path) -> dict[str, TenantEntry]:
    """Every entry of the file; a SettingsError naming the tenant and field of a bad one."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"CDR_TENANTS_FILE: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise SettingsError(f"CDR_TENANTS_FILE: {path} is not valid {kind}: {exc}") from exc
    tenants = document.get("tenants") if isinstance(document, dict) else None
    if not isinstance(tenants, dict):
        raise SettingsError("CDR_TENANTS_FILE: expected a mapping 'tenants:' of tenant id -> entry")
    entries: dict[str, TenantEntry] = {}
    for tenant, raw in tenants.items():
        if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
            raise SettingsError(
                f"CDR_TENANTS_FILE: {str(tenant)[:40]!r} is not a tenant id (ASCII letters, digits, '.', '-', '_')"
            )
        try:
            entries[tenant] = TenantEntry.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            message = first["msg"].removeprefix("Value error, ")
            raise SettingsError(f"CDR_TENANTS_FILE: tenant {tenant!r}: {where}: {message}") from exc
    return entries


FileStamp = tuple[int, int, int] | None


def file_stamp(path: Path) -> FileStamp:
    """What changes when the file is replaced or rewritten (None: it is not there)."""
    try:
        st = os.stat(path)  # follows the symlink a Secret volume swaps
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class TenantZones:
    """The timezone naive PBX timestamps are read in, per tenant: ``by_tenant`` lists the
    tenants whose zone is not ``default`` (every other tenant's is); ``phones``: the region
    their national numbers are read in (cdr.phones)."""

    default: ZoneInfo
    by_tenant: Mapping[str, ZoneInfo] = field(default_factory=dict)
    phones: PhoneRegions = field(default_factory=PhoneRegions)

    def of(self, tenant: str) -> ZoneInfo:
        return self.by_tenant.get(tenant, self.default)


class ZoneDirectory:
    """The tenants' zones from ``CDR_TENANTS_FILE`` (``path``), re-read when the file
    changes: each ``current()`` (once a batch) looks at the file's stamp, one ``stat``.
    A file that no longer parses keeps the previous zones and says so in the log; at
    start it is a SettingsError (exit 2), as in the API."""

    def __init__(self, default: ZoneInfo, path: Path | None = None, *, phone_region: str = "VN") -> None:
        self._default = default
        self._phone_region = phone_region
        self._path = path
        self._stamp = None if path is None else file_stamp(path)
        self._zones = TenantZones(default, phones=PhoneRegions(phone_region)) if path is None else self._load(path)

    def _load(self, path: Path) -> TenantZones:
        entries = read_tenants_file(path)
        zones = {
            tenant: ZoneInfo(entry.timezone)
            for tenant, entry in entries.items()
            if entry.timezone is not None and ZoneInfo(entry.timezone) != self._default
        }
        regions = {
            tenant: entry.phone_region.upper()
            for tenant, entry in entries.items()
            if entry.phone_region is not None and entry.phone_region.upper() != self._phone_region
        }
        return TenantZones(self._default, zones, PhoneRegions(self._phone_region, regions))

    def current(self) -> TenantZones:
        path = self._path
        if path is None:
            return self._zones
        stamp = file_stamp(path)
        if stamp == self._stamp:
            return self._zones
        self._stamp = stamp
        try:
            zones = self._load(path)
        except SettingsError as exc:
            log.error(
                "tenant directory changed but cannot be used; keeping the previous zones", extra={"error": str(exc)}
            )
            return self._zones
        if (zones.by_tenant, zones.phones) != (self._zones.by_tenant, self._zones.phones):
            self._zones = zones
            log.info("tenant directory reloaded", extra={"tenant_zones": len(zones.by_tenant)})
        return self._zones

"""The tenant directory: who may call the API and how each tenant's answers look.

``CDR_TENANTS_FILE`` (YAML or JSON, a mounted Secret in the chart) lists per tenant its
token digests (several at once, for rotation), its timezone, phone region and rate
limit; anything left out falls back to the service-wide setting. ``CDR_API_TOKENS`` and
``CDR_API_TOKENS_FILE`` still work: their tenants get the service-wide profile.

    tenants:
      acme.vn:
        tokens: [<sha256 hex of a token>, <sha256 hex of the next one>]
        timezone: Asia/Ho_Chi_Minh
        phone_region: VN
        rate_limit_per_s: 50
        rate_limit_burst: 100
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import orjson
import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cdr.settings import SHA256_HEX, TENANT_ID, Settings, SettingsError, claim_token, known_timezone


@dataclass(frozen=True)
class TenantProfile:
    """How one tenant's requests are read and answered."""

    timezone: str
    phone_region: str
    rate_per_s: float
    burst: int

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Directory:
    digests: dict[str, str]  # sha256 hex -> tenant
    profiles: dict[str, TenantProfile]  # tenants of the tenants file
    default: TenantProfile

    def profile(self, tenant: str) -> TenantProfile:
        return self.profiles.get(tenant, self.default)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[str] = Field(min_length=1)
    timezone: str | None = None
    phone_region: str | None = None
    rate_limit_per_s: float | None = Field(None, ge=0)
    rate_limit_burst: int | None = Field(None, ge=1)

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


def default_profile(settings: Settings) -> TenantProfile:
    return TenantProfile(settings.timezone, settings.phone_region, settings.rate_limit_per_s, settings.rate_limit_burst)


def load_directory(settings: Settings) -> Directory:
    """Every token digest and tenant profile the settings name; a SettingsError naming the
    tenant and field for a bad entry, and both tenants for a digest listed twice."""
    digests = settings.token_digests()
    default = default_profile(settings)
    profiles: dict[str, TenantProfile] = {}
    if settings.tenants_file is None:
        return Directory(digests, profiles, default)
    for tenant, entry in _read(settings).items():
        for digest in entry.tokens:
            try:
                claim_token(digests, digest, tenant)
            except ValueError as exc:
                raise SettingsError(f"CDR_TENANTS_FILE: {exc}") from exc
        profiles[tenant] = TenantProfile(
            entry.timezone or default.timezone,
            entry.phone_region or default.phone_region,
            default.rate_per_s if entry.rate_limit_per_s is None else entry.rate_limit_per_s,
            entry.rate_limit_burst or default.burst,
        )
    return Directory(digests, profiles, default)


def _read(settings: Settings) -> dict[str, _Entry]:
    path = settings.tenants_file
    assert path is not None
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
    entries: dict[str, _Entry] = {}
    for tenant, raw in tenants.items():
        if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
            raise SettingsError(
                f"CDR_TENANTS_FILE: {str(tenant)[:40]!r} is not a tenant id (ASCII letters, digits, '.', '-', '_')"
            )
        try:
            entries[tenant] = _Entry.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            message = first["msg"].removeprefix("Value error, ")
            raise SettingsError(f"CDR_TENANTS_FILE: tenant {tenant!r}: {field}: {message}") from exc
    return entries

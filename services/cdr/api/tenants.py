"""The tenant directory: who may call the API and how each tenant's answers look.

``CDR_TENANTS_FILE`` (YAML or JSON, a mounted Secret in the chart) lists per tenant its
token digests (several at once, for rotation), its timezone, phone region and rate
limit; anything left out falls back to the service-wide setting. ``CDR_API_TOKENS`` and
``CDR_API_TOKENS_FILE`` still work: their tenants get the service-wide profile. The file's
parser, and the file's example, are in ``cdr.tenants`` (the ingestor reads each tenant's
timezone from the same file).
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from cdr.settings import ApiSettings, CommonSettings, SettingsError, claim_token
from cdr.tenants import read_tenants_file


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


def default_profile(api: ApiSettings, common: CommonSettings) -> TenantProfile:
    return TenantProfile(common.timezone, common.phone_region, api.rate_limit_per_s, api.rate_limit_burst)


def load_directory(api: ApiSettings, common: CommonSettings) -> Directory:
    """Every token digest and tenant profile the settings name; a SettingsError naming the
    tenant and field for a bad entry, and both tenants for a digest listed twice."""
    digests = api.token_digests()
    default = default_profile(api, common)
    profiles: dict[str, TenantProfile] = {}
    if common.tenants_file is None:
        return Directory(digests, profiles, default)
    for tenant, entry in read_tenants_file(common.tenants_file).items():
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

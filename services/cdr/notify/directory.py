"""The endpoints `cdr notify` delivers to: ``tenants.<id>.webhooks`` of the tenant directory
(``cdr.tenants``), re-read when the file changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from cdr.notify.ssrf import literal_refusal
from cdr.settings import SettingsError
from cdr.store.feed import FeedFilters
from cdr.tenants import FileStamp, file_stamp, read_tenants_file

log = logging.getLogger(__name__)

EndpointKey = tuple[str, str]
"""(tenant, endpoint name)."""


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as configured. ``refused``: why its URL may not be used (SSRF rule on a
    literal address, or http without CDR_WEBHOOK_ALLOW_PRIVATE), None when it may."""

    tenant: str
    name: str
    url: str
    secrets: tuple[str, ...]
    filters: FeedFilters
    zone: ZoneInfo
    enabled: bool
    refused: str | None

    @property
    def key(self) -> EndpointKey:
        return (self.tenant, self.name)


def load_endpoints(path: Path | None, default_zone: ZoneInfo, *, allow_private: bool) -> dict[EndpointKey, Endpoint]:
    """Every endpoint of the file (none without one); a SettingsError naming the tenant and
    field of a bad entry. A refused URL is not an error of the file: only that endpoint is
    held back, with the reason shown in its state, and every other one is delivered."""
    if path is None:
        return {}
    endpoints: dict[EndpointKey, Endpoint] = {}
    for tenant, entry in read_tenants_file(path).items():
        zone = ZoneInfo(entry.timezone) if entry.timezone else default_zone
        for hook in entry.webhooks:
            endpoint = Endpoint(
                tenant=tenant,
                name=hook.name,
                url=hook.url,
                secrets=tuple(hook.secrets),
                filters=FeedFilters(**hook.filters.model_dump()),
                zone=zone,
                enabled=hook.enabled,
                refused=literal_refusal(hook.url, allow_private=allow_private),
            )
            endpoints[endpoint.key] = endpoint
    return endpoints


class EndpointDirectory:
    """The endpoints of ``CDR_TENANTS_FILE``, re-read when its stamp changes. A file that no
    longer parses keeps the previous endpoints and says so in the log; at start it is a
    SettingsError (exit 2), as in the API and the ingestor."""

    def __init__(self, path: Path | None, default_zone: ZoneInfo, *, allow_private: bool) -> None:
        self._path = path
        self._zone = default_zone
        self._allow_private = allow_private
        self._stamp: FileStamp = None if path is None else file_stamp(path)
        self.endpoints = load_endpoints(path, default_zone, allow_private=allow_private)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the endpoints did."""
        if self._path is None:
            return False
        stamp = file_stamp(self._path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            endpoints = load_endpoints(self._path, self._zone, allow_private=self._allow_private)
        except SettingsError as exc:
            log.error(
                "tenant directory changed but cannot be used; keeping the previous webhooks", extra={"error": str(exc)}
            )
            return False
        if endpoints == self.endpoints:
            return False
        self.endpoints = endpoints
        log.info("webhooks reloaded", extra={"endpoints": len(endpoints)})
        return True

"""GET /v1/webhooks and POST /v1/webhooks/{name}/replay: a tenant's webhook endpoints, as the
tenant directory configures them and `cdr notify` last recorded their delivery
(README, "Webhooks"). The API never delivers: it reads the notifier's state and writes
replay requests, which the notifier adopts within CDR_WEBHOOK_RELOAD_MS."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cdr.api.errors import InvalidParameter, NotFound
from cdr.api.responses import OrjsonResponse
from cdr.api.routes import Caller, CdrRoutes
from cdr.settings import ApiSettings, CommonSettings, SettingsError
from cdr.store import Store
from cdr.store.feed import CHANGES_TABLE, start_position, tenant_start
from cdr.store.webhooks import (
    REPLAYS_TABLE,
    STATE_TABLE,
    EndpointState,
    Replay,
    position_text,
    replay_insert,
    state_read,
    states_of,
)
from cdr.tenants import FileStamp, TenantEntry, file_stamp, read_tenants_file

log = logging.getLogger(__name__)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Webhooks:
    """The directory's webhooks, re-read when the file changes (the API's token directory
    checks the same file on its own schedule; a file that no longer parses is reported there)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: FileStamp = None
        self._entries: dict[str, TenantEntry] = {}

    def of(self, tenant: str) -> TenantEntry | None:
        if self._path is not None:
            stamp = file_stamp(self._path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._entries = read_tenants_file(self._path)
                except SettingsError as exc:
                    # As the token directory does: the previous entries stay in use.
                    log.error(
                        "tenant directory changed but cannot be used; keeping the previous webhooks",
                        extra={"error": str(exc)},
                    )
        return self._entries.get(tenant)


class WebhookRoutes:
    def __init__(self, api: ApiSettings, common: CommonSettings, store: Store, cdr: CdrRoutes) -> None:
        self._store = store
        self._cdr = cdr
        self._webhooks = _Webhooks(common.tenants_file)
        self._state = store.qualified(STATE_TABLE)
        self._replays = store.qualified(REPLAYS_TABLE)
        self._changes = store.qualified(CHANGES_TABLE)
        self._retention_s = api.feed_retention_days * 86_400

    def routes(self) -> list[Route]:
        replay = self._cdr.tenant_route("/v1/webhooks/{name}/replay", self.replay)
        return [
            self._cdr.tenant_route("/v1/webhooks", self.list_webhooks),
            # Authentication, the rate limit and the read slot come with tenant_route.
            Route(replay.path, replay.endpoint, methods=["POST"]),
        ]

    async def list_webhooks(self, request: Request, caller: Caller) -> Response:
        entry = self._webhooks.of(caller.tenant)
        hooks = entry.webhooks if entry is not None else []
        query = state_read(self._state, caller.tenant)
        states = states_of(await self._cdr.run(query.sql, query.params)) if hooks else {}
        return OrjsonResponse(
            {"data": [_shown(hook.model_dump(), states.get((caller.tenant, hook.name))) for hook in hooks]}
        )

    async def replay(self, request: Request, caller: Caller) -> Response:
        name = request.path_params["name"]
        entry = self._webhooks.of(caller.tenant)
        if entry is None or name not in {hook.name for hook in entry.webhooks}:
            raise NotFound(f"no webhook named {name[:64]!r}")
        since = _since(request.query_params.get("since"), self._retention_s)
        query = tenant_start(self._changes, caller.tenant, since)
        position = start_position(await self._cdr.run(query.sql, query.params))
        generation = time.time_ns() // 1_000_000
        insert = replay_insert(
            self._replays, Replay(caller.tenant, name, generation, position), since, datetime.now(UTC)
        )
        await self._cdr.guarded(self._store.command(insert.sql, insert.params))
        return OrjsonResponse(
            {"name": name, "since": _time(since), "replay_generation": generation, "position": position_text(position)},
            status_code=202,
        )


def _since(text: str | None, retention_s: int) -> datetime:
    if not text:
        raise InvalidParameter("since is required: the time (RFC 3339) to deliver changes from", param="since")
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(
            "since must be an RFC 3339 time with its offset, e.g. 2026-12-07T10:00:00Z", param="since"
        ) from None
    if since.tzinfo is None:
        raise InvalidParameter("since needs its UTC offset (Z or +07:00)", param="since")
    now = time.time()
    if since.timestamp() < now - retention_s:
        raise InvalidParameter(
            f"since is older than the change feed's retention ({retention_s // 86_400} days)", param="since"
        )
    if since.timestamp() > now + 60:
        raise InvalidParameter("since is in the future", param="since")
    return since.astimezone(UTC)


def _shown(hook: dict[str, Any], state: EndpointState | None) -> dict[str, Any]:
    """An endpoint as its tenant sees it: never its secrets."""
    filters = {k: v for k, v in hook["filters"].items() if v is not None}
    shown: dict[str, Any] = {"name": hook["name"], "url": hook["url"], "enabled": hook["enabled"], "filters": filters}
    if state is None:
        # The notifier has not picked it up yet (it reads the directory every few seconds).
        return shown | {
            "state": "pending",
            "position": None,
            "lag_seconds": None,
            "last_success_at": None,
            "last_error": None,
            "failing_since": None,
            "disabled_reason": None,
            "replay_generation": 0,
            "updated_at": None,
        }
    error = None
    if state.last_error_at is not None:
        error = {"at": _time(state.last_error_at), "status": state.last_status or None, "message": state.last_error}
    return shown | {
        "state": "disabled" if state.disabled_reason else "failing" if state.failing_since else "delivering",
        "position": {str(p): o for p, o in sorted(state.position.items())},
        "lag_seconds": round(state.lag_s, 3),
        "last_success_at": _time(state.last_success_at),
        "last_error": error,
        "failing_since": _time(state.failing_since),
        "disabled_reason": state.disabled_reason or None,
        "replay_generation": state.replay_generation,
        "updated_at": _time(state.updated_at),
    }

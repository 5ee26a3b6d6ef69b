"""GET /v1/cdr and GET /v1/cdr/{id} (spec/API.md)."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cdr.api.auth import TokenAuthority
from cdr.api.cursor import CursorCodec, Position
from cdr.api.errors import InvalidParameter, InvalidScrollId, NotFound, QueryBudgetExceeded, RateLimited, Unavailable
from cdr.api.middleware import EXTRA_HEADERS
from cdr.api.params import (
    FILTER_PARAMS,
    Context,
    ExportRequest,
    Limits,
    ListRequest,
    export_params,
    list_params,
    parse_export_request,
    parse_list_request,
    parse_stats_request,
    stats_params,
)
from cdr.api.ratelimit import Slots, TenantRateLimiter
from cdr.api.responses import OrjsonResponse
from cdr.model.record import API_FIELDS
from cdr.settings import ApiSettings
from cdr.store import Store, StoreError, StoreUnavailable
from cdr.store.errors import BUDGET
from cdr.store.queries import (
    MAX_GROUPS,
    MAX_LISTED_KEYS,
    STAT_QUANTILE_FIELDS,
    Key,
    PagePlan,
    SearchFilters,
    Window,
    call_id_lookup_query,
    export_query,
    export_window_end_query,
    id_lookup_query,
    month_counts_query,
    month_window,
    page_plan,
    page_query,
    phone_keys_query,
    record,
    scroll_query,
    stats_query,
    tenant_edge_query,
    tenant_granules_query,
)

log = logging.getLogger(__name__)

# Query parameter -> field of SearchFilters.
_FIELD_OF = {
    "start_date": "start",
    "end_date": "end",
    "start_date_ended": "start_ended",
    "end_date_ended": "end_ended",
    "phone": "phones",
    "phone_prefix": "phone_prefixes",
}


@dataclass(frozen=True)
class Caller:
    """The tenant a request acts for, and how its dates and phones are read and its times shown."""

    tenant: str
    timezone: str
    context: Context


TenantHandler = Callable[[Request, Caller], Awaitable[Response]]
T = TypeVar("T")
_MAX_KEY = 1024
_REPLICA = ""  # the key of the replica-wide export count
_BOM = "\ufeff".encode()
_CSV_HEADER = (",".join(API_FIELDS) + "\r\n").encode()
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_WINDOW = timedelta(days=31)
_EDGE_TTL_S = 300.0
# A phone search short of records reads this many times more candidates next: a
# candidate fails only when another filter or a correction ruled its call out.
_MORE_KEYS = 8
# A phone search in page mode whose number has at most this many candidates (most numbers:
# a CRM looking up a caller) reads all their records at once, and its total and page from
# them: two reads one after another (the candidates, their records) instead of three (the
# month counts, the candidates, the page's records), each read ~5 ms before it reads anything
# (bench/RESULTS.md, session 16).
_PHONE_PAGE_ALL = 250
# A phone search that reads all of its records (a page's total, stats) reads them by the
# number's candidate keys only when there are at most this many a granule of the tenant's
# range (8,192 rows) within its time bounds: then the keys leave ~4 in 5 granules unread.
# With more, they skip ever fewer granules and still cost a lookup for every row read; at
# the far end, a hotline's 22,464 calls in a tenant of 100,000 (~1,800 a granule), counting
# through its keys took 28.9 ms, from the tenant's range 12.2 (bench/RESULTS.md, session
# 18). The number itself is matched on each record's newest version either way, so the
# answer is the same.
_CANDIDATES_A_GRANULE = 0.25


def _phone_page_most() -> int:
    """The most candidates whose records a phone search in page mode reads at once."""
    return min(_PHONE_PAGE_ALL, MAX_LISTED_KEYS)


def _page_answer(wanted: ListRequest, rows: list[list[Any]], total: int) -> dict[str, Any]:
    """A page-mode answer: the page's records and the selection's total."""
    return {"data": [record(row) for row in rows], "limit": wanted.limit, "page": wanted.page, "total": total}


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _as_utc(value: datetime) -> datetime:
    """A DateTime64(3, 'UTC') value as clickhouse-connect decodes it, made aware."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class CdrRoutes:
    def __init__(
        self,
        settings: ApiSettings,
        store: Store,
        auth: TokenAuthority,
        cursors: CursorCodec,
        limiter: TenantRateLimiter,
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._store = store
        self._auth = auth
        self._cursors = cursors
        self._table = store.qualified("cdr")
        self._limits = Limits(settings.default_limit, settings.max_limit, settings.max_offset)
        self._params = list_params(self._limits)
        # (tenant, latest) -> (looked up at, edge): only a hint for where a read starts.
        self._edges: dict[tuple[str, bool], tuple[float, datetime | None]] = {}
        # tenant -> (looked up at, granules of its whole range): only decides how a busy
        # number's records are read (``_by_candidates``).
        self._granules: dict[str, tuple[float, int]] = {}
        # tenant -> (read at, filters, month counts) of its last page: only a hint for where
        # its next page lies (``_page_guess``); one per tenant, whatever it filters by.
        self._months: dict[str, tuple[float, SearchFilters, list[list[Any]]]] = {}
        # Per tenant: store reads its requests hold (a page with its total: two).
        self._reads = Slots(settings.tenant_max_concurrent_requests)
        self._tenant_exports = Slots(settings.tenant_max_concurrent_exports)
        self._exports = Slots(settings.max_concurrent_exports)  # the replica's, all tenants
        self._export_params = export_params(self._limits)
        self._stats_params = stats_params(self._limits)

    def _caller(self, request: Request) -> Caller:
        tenant = self._auth.tenant_for(request.headers.get("authorization"))
        profile = self._auth.profile(tenant)
        state = self._limiter.check(tenant, profile.rate_per_s, profile.burst)
        request.scope.setdefault(EXTRA_HEADERS, []).extend(state.items())
        return Caller(tenant, profile.timezone, Context(profile.zone, profile.phone_region))

    def routes(self) -> list[Route]:
        """Every /v1 route, each built by ``tenant_route``: authentication, the tenant's
        rate limit and its store read come with the route, not with each handler. A
        handler that reads more at once claims the others itself (a page's total), and
        an export holds its read until its stream ends, after the handler returned."""
        return [
            self.tenant_route("/v1/cdr", self.list_cdrs),
            # Before the lookup route, whose {key:path} would take the word as a Call-ID.
            self.tenant_route("/v1/cdr/export", self.export_cdrs, reads=0),
            self.tenant_route("/v1/cdr/stats", self.cdr_stats),
            self.tenant_route("/v1/cdr/{key:path}", self.get_cdr),
        ]

    def tenant_route(self, path: str, handler: TenantHandler, reads: int = 1) -> Route:
        async def endpoint(request: Request) -> Response:
            caller = self._caller(request)
            release = self.claim_reads(caller.tenant, reads)
            try:
                return await handler(request, caller)
            finally:
                release()

        endpoint.__name__ = handler.__name__
        return Route(path, endpoint, methods=["GET"])

    async def list_cdrs(self, request: Request, caller: Caller) -> Response:
        wanted = parse_list_request(request.query_params, self._params, caller.context, self._limits)
        if wanted.mode == "page":
            return OrjsonResponse(await self._page(caller, wanted))
        return OrjsonResponse(await self._scroll(caller, wanted))

    async def export_cdrs(self, request: Request, caller: Caller) -> Response:
        """Every record the filters select, in list order, streamed as it is read.

        Read in keyset windows (``_export_window_rows`` records): a key-only read finds
        where the next window ends (the last of the next that many records), then that
        window is one read that ClickHouse formats itself (CSV or JSONEachRow: no Python
        object per value) and hands over in pieces as it reads (``Store.stream_formatted``).
        So an export holds at most one window in memory however its calls spread over time
        and however slowly its client reads, and every read stays within the read budget;
        a replica runs at most ``CDR_MAX_CONCURRENT_EXPORTS`` at once, and their reads run
        on the store's ``CDR_EXPORT_READERS`` bulk workers (the engine's working memory per
        read is what grows with exports at once). Each window starts after the last key of
        the one before, so a record is exported once, and one stored meanwhile ahead of
        the read is still met. The first window is read up to its first piece before the
        response starts, so an unavailable store is still a 503; a failure later cuts the
        stream (the client sees an incomplete chunked body). A client that goes away
        stops the reads."""
        wanted = parse_export_request(request.query_params, self._export_params, caller.context)
        tenant = caller.tenant
        release = self._export_slot(tenant)
        try:
            last = await self._export_window_end(caller, wanted, None)
            opening = self._export_window(caller, wanted, None, last)
            first = await self.guarded(anext(opening, b""))
        except BaseException:
            release()
            raise

        # Compressed here, a piece at a time on a worker thread, at the fastest level:
        # the app-wide gzip would compress megabytes per window on the event loop.
        packer = zlib.compressobj(1, zlib.DEFLATED, _GZIP_WBITS) if _accepts_gzip(request) else None

        async def packed(chunk: bytes) -> bytes:
            return chunk if packer is None else await asyncio.to_thread(packer.compress, chunk)

        async def pieces() -> AsyncGenerator[bytes, None]:
            yield first
            async for piece in opening:
                yield piece
            after = last
            while after is not None:
                through = await self._export_window_end(caller, wanted, after)
                # Closed at once when the client leaves: that stops the window's read.
                async with aclosing(self._export_window(caller, wanted, after, through)) as read:
                    async for piece in read:
                        yield piece
                after = through

        async def body() -> AsyncIterator[bytes]:
            try:
                if wanted.format == "csv":
                    yield await packed((_BOM if wanted.bom else b"") + _CSV_HEADER)
                async with aclosing(pieces()) as stream:
                    async for piece in stream:
                        yield await packed(piece)
                if packer is not None:
                    yield packer.flush()
            finally:
                await opening.aclose()
                release()

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        media = "text/csv; charset=utf-8" if wanted.format == "csv" else "application/x-ndjson"
        headers = {"Content-Disposition": f'attachment; filename="cdr-{tenant}-{stamp}.{wanted.format}"'}
        if packer is not None:
            headers |= {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return StreamingResponse(body(), media_type=media, headers=headers)

    async def _export_window_end(self, caller: Caller, wanted: ExportRequest, after: Key | None) -> Key | None:
        """The key of the last record of the window after ``after``; None: nothing follows."""
        query = export_window_end_query(
            self._table,
            caller.tenant,
            wanted.filters,
            desc=wanted.order == "desc",
            after=after,
            rows=self._export_window_rows(),
        )
        found = await self.guarded(self._store.query(query.sql, query.params, bulk=True))
        return (_as_utc(found[0][0]), found[0][1]) if found else None

    def _export_window_rows(self) -> int:
        """The next window's records: ``CDR_EXPORT_WINDOW_ROWS`` shared by the exports in
        progress (one alone reads whole windows, four read a quarter each), at least
        ``CDR_EXPORT_MIN_WINDOW_ROWS``. Fewer records per window at once keep the pieces
        the exports hold, and the reads that wait for a reader, short."""
        most = self._settings.export_window_rows
        least = min(self._settings.export_min_window_rows, most)
        return max(most // max(self._exports.taken(_REPLICA), 1), least)

    async def _export_window(
        self, caller: Caller, wanted: ExportRequest, after: Key | None, through: Key | None
    ) -> AsyncGenerator[bytes, None]:
        """One window's records, formatted (nothing when ``through`` is None: no window)."""
        if through is None:
            return
        query = export_query(
            self._table,
            caller.tenant,
            wanted.filters,
            tz=caller.timezone,
            desc=wanted.order == "desc",
            after=after,
            last=through,
        )
        fmt = "CSV" if wanted.format == "csv" else "JSONEachRow"
        async with aclosing(self._store.stream_formatted(query.sql, query.params, fmt)) as read:
            async for piece in read:
                yield piece

    def _export_slot(self, tenant: str) -> Callable[[], None]:
        """An export's claims, held until its stream ends: one of the replica's export
        slots, one of the tenant's, and one of the tenant's reads (its windows are read
        one after another). A 429 when any is taken; returns their release."""
        held = [
            self._exports.claim(
                _REPLICA,
                RateLimited(
                    f"this replica already runs {self._exports.limit} exports; retry shortly",
                    headers={"Retry-After": "5"},
                ),
            )
        ]
        try:
            held.append(
                self._tenant_exports.claim(
                    tenant,
                    RateLimited(
                        "this tenant already runs an export; retry when it finishes", headers={"Retry-After": "5"}
                    ),
                )
            )
            held.append(self.claim_reads(tenant, 1))
        except RateLimited:
            for release in held:
                release()
            raise

        def release_all() -> None:
            for release in held:
                release()

        return release_all

    async def cdr_stats(self, request: Request, caller: Caller) -> Response:
        wanted = parse_stats_request(request.query_params, self._stats_params, caller.context)
        query = stats_query(
            self._table,
            caller.tenant,
            wanted.filters,
            group_by=wanted.group_by,
            tz=caller.timezone,
            by_candidates=await self._by_candidates(caller.tenant, wanted.filters),
        )
        rows = await self.run(query.sql, query.params)
        if len(rows) > MAX_GROUPS:
            raise InvalidParameter(
                f"more than {MAX_GROUPS} groups; narrow the filters or group by something coarser",
                param="group_by",
            )
        return OrjsonResponse({"group_by": wanted.group_by, "data": [_stat(row) for row in rows]})

    async def get_cdr(self, request: Request, caller: Caller) -> Response:
        key = request.path_params["key"]
        if not key or len(key) > _MAX_KEY:
            raise NotFound("no such CDR")
        return OrjsonResponse(record(await self._lookup(caller, key)))

    async def _lookup(self, caller: Caller, key: str) -> list[Any]:
        tenant, tz = caller.tenant, caller.timezone
        rows: list[list[Any]] = []
        # A key that is a UUID names an id first; a Call-ID may look like a UUID too.
        try:
            id_ = UUID(key)
        except ValueError:
            pass
        else:
            by_id = id_lookup_query(self._table, tenant, id_, tz=tz)
            rows = await self.run(by_id.sql, by_id.params)
        if not rows:
            by_call_id = call_id_lookup_query(self._table, tenant, key, tz=tz)
            rows = await self.run(by_call_id.sql, by_call_id.params)
        if not rows:
            raise NotFound("no such CDR")
        return rows[0]

    async def _page(self, caller: Caller, wanted: ListRequest) -> dict[str, Any]:
        """A page and its total: the selection's records per month first, then the page
        from the months that hold it only (a read of every month's parts costs ~3x one
        month's; bench/RESULTS.md, issue 29). Where the page most likely lies
        (``_page_guess``) it is read at the same time as the counts, and again only when
        the counts put it elsewhere."""
        tenant, desc = caller.tenant, wanted.order == "desc"
        # A number with many candidates counts its months; once counted (a console paging
        # on), it goes there at once instead of checking its candidates again.
        if (
            wanted.filters.phones
            and self._counted_months(tenant, wanted.filters) is None
            and (found := await self._phone_page(caller, wanted)) is not None
        ):
            return found
        # A number that gets here has more candidates than _phone_page reads at once (or
        # had, when its months were counted before).
        by_candidates = await self._by_candidates(tenant, wanted.filters, more_than=_phone_page_most())
        counts = month_counts_query(self._table, tenant, wanted.filters, by_candidates=by_candidates)
        # The route holds one read; the guessed page runs beside the counts on another.
        release = self.claim_reads(tenant, 1)
        try:
            guess = await self._page_guess(tenant, wanted, desc)
            if guess is None:
                months = await self.run(counts.sql, counts.params)
                plan = page_plan(months, offset=wanted.offset, limit=wanted.limit, desc=desc)
                rows = await self._page_rows(caller, wanted, plan)
            else:
                months, guessed = await asyncio.gather(
                    self.run(counts.sql, counts.params), self._page_rows(caller, wanted, guess)
                )
                plan = page_plan(months, offset=wanted.offset, limit=wanted.limit, desc=desc)
                same = plan.window is None or (plan.window, plan.offset) == (guess.window, guess.offset)
                rows = guessed if same else await self._page_rows(caller, wanted, plan)
        finally:
            release()
        self._months[tenant] = (time.monotonic(), wanted.filters, months)
        return _page_answer(wanted, rows if plan.window is not None else [], plan.total)

    def _counted_months(self, tenant: str, f: SearchFilters) -> list[list[Any]] | None:
        """The month counts of the tenant's last page request, if it had these filters and
        was a while ago at most."""
        cached = self._months.get(tenant)
        if cached is not None and cached[1] == f and time.monotonic() - cached[0] < _EDGE_TTL_S:
            return cached[2]
        return None

    async def _phone_page(self, caller: Caller, wanted: ListRequest) -> dict[str, Any] | None:
        """A phone search's page and total from all its records, when its number has at most
        ``_PHONE_PAGE_ALL`` candidates (None: more; the months are counted instead). Every
        record it selects is a candidate's (``_phone_keys``), so reading the candidates'
        records with the search's filters is the whole selection, in list order."""
        f, desc = wanted.filters, wanted.order == "desc"
        most = _phone_page_most()
        keys = phone_keys_query(self._table, caller.tenant, f, desc=desc, after=None, keys=most + 1)
        listed = [(_as_utc(started), id_) for started, id_ in await self.run(keys.sql, keys.params)]
        if len(listed) > most:
            return None
        rows: list[list[Any]] = []
        if listed:
            every = page_query(
                self._table, caller.tenant, f, tz=caller.timezone, limit=most, offset=0, desc=desc, phone_keys=listed
            )
            rows = await self.run(every.sql, every.params)
        return _page_answer(wanted, rows[wanted.offset : wanted.offset + wanted.limit], len(rows))

    async def _page_guess(self, tenant: str, wanted: ListRequest, desc: bool) -> PagePlan | None:
        """Where the page most likely lies: by the month counts of the tenant's last page
        request, when it had the same filters (a console paging on); else, for page 1, the
        month of the tenant's newest (oldest) call or of the filters' bound when that comes
        first (not for a phone search, whose calls need not be near the tenant's edge)."""
        f = wanted.filters
        months = self._counted_months(tenant, f)
        if months is not None:
            plan = page_plan(months, offset=wanted.offset, limit=wanted.limit, desc=desc)
            return plan if plan.window is not None else None
        if wanted.offset or f.phones:
            return None
        edge = await self._tenant_edge(tenant, latest=desc)
        bound = f.end if desc else f.start
        if edge is None:
            return None
        if bound is not None and (bound < edge if desc else bound > edge):
            edge = bound
        edge = edge.astimezone(UTC)
        return PagePlan(0, month_window(edge.year * 100 + edge.month), 0)

    async def _page_rows(self, caller: Caller, wanted: ListRequest, plan: PagePlan) -> list[list[Any]]:
        window = plan.window
        if window is None:
            return []
        f, desc = wanted.filters, wanted.order == "desc"

        async def read(keys: Sequence[Key] | int | None) -> list[list[Any]]:
            page = page_query(
                self._table,
                caller.tenant,
                f,
                tz=caller.timezone,
                limit=wanted.limit,
                offset=plan.offset,
                desc=desc,
                window=window,
                phone_keys=keys,
            )
            return await self.run(page.sql, page.params)

        if not f.phones:
            return await read(None)
        return await self._phone_rows(
            caller.tenant,
            f,
            read,
            desc=desc,
            after=None,
            window=window,
            enough=wanted.limit,
            first=plan.offset + wanted.limit,
        )

    async def _scroll(self, caller: Caller, wanted: ListRequest) -> dict[str, Any]:
        tenant = caller.tenant
        filters, order, limit, after = wanted.filters, wanted.order, wanted.limit, None
        now = int(time.time())
        if wanted.scroll_id is not None:
            position = self._cursors.decode(wanted.scroll_id, tenant=tenant, now=now)
            _same_filters(wanted, position)
            try:
                # Signed by us, but possibly by an older release with other filter names.
                filters = SearchFilters.from_canonical(position.filters)
            except (TypeError, ValueError):
                raise InvalidScrollId(
                    "scroll_id is from an incompatible version; start a new scroll", param="scroll_id"
                ) from None
            order = "desc" if position.order == "desc" else "asc"
            if not wanted.limit_given:
                limit = min(position.limit, self._settings.max_limit)
            try:
                after = (
                    datetime.fromtimestamp(position.time_started_ms / 1000, tz=UTC),
                    UUID(position.id),
                )
            except (ValueError, OverflowError, OSError):
                raise InvalidScrollId("scroll_id is malformed", param="scroll_id") from None
        rows = await self._scroll_rows(caller, filters, limit=limit, desc=order == "desc", after=after)
        more = len(rows) > limit
        rows = rows[:limit]
        next_id = None
        if more:
            last = rows[-1]
            next_id = self._cursors.encode(
                Position(
                    tenant=tenant,
                    filters=filters.canonical(),
                    order=order,
                    time_started_ms=int(last[-1]),
                    id=str(last[0]),
                    issued_at=now,
                    limit=limit,
                )
            )
        return {"data": [record(row) for row in rows], "scroll_id": next_id}

    async def _scroll_rows(
        self, caller: Caller, filters: SearchFilters, *, limit: int, desc: bool, after: tuple[datetime, UUID] | None
    ) -> list[list[Any]]:
        """Up to limit + 1 rows after the position, read one time window first.

        A tenant's rows spread over every monthly partition, and an unbounded ordered
        read touches all of them even for ten rows. Most batches fill from the first
        ~month after their starting edge, so that window is read first and the rest
        of the range only when it falls short. Both reads are in order, so the
        concatenation is too. A range that ends within the first window (the filters'
        other bound, else the tenant's other edge) is read at once: the second read
        would only prove that nothing follows (the last batch of a scroll)."""
        tenant, tz = caller.tenant, caller.timezone
        if filters.phones:
            return await self._phone_scroll_rows(caller, filters, limit=limit, desc=desc, after=after)
        edge = after[0] if after else (filters.end if desc else filters.start)
        far = filters.start if desc else filters.end
        if edge is None:
            edge = await self._tenant_edge(tenant, latest=desc)
        if far is None and edge is not None:
            # A stale edge only picks the slower shape: either shape reads every record.
            far = await self._tenant_edge(tenant, latest=not desc)
        if edge is None or (far is not None and abs(far - edge) <= _WINDOW):
            query = scroll_query(self._table, tenant, filters, tz=tz, limit=limit, desc=desc, after=after)
            return await self.run(query.sql, query.params)
        # asc: [edge, edge + W), then [edge + W, ...);  desc: [edge - W, edge], then [..., edge - W)
        split = edge - _WINDOW if desc else edge + _WINDOW
        near_window = (split, None) if desc else (None, split)
        rest_window = (None, split) if desc else (split, None)
        near = scroll_query(
            self._table, tenant, filters, tz=tz, limit=limit, desc=desc, after=after, window=near_window
        )
        rows = await self.run(near.sql, near.params)
        if len(rows) > limit:
            return rows
        rest = scroll_query(
            self._table, tenant, filters, tz=tz, limit=limit - len(rows), desc=desc, after=after, window=rest_window
        )
        return rows + await self.run(rest.sql, rest.params)

    async def _phone_scroll_rows(
        self, caller: Caller, filters: SearchFilters, *, limit: int, desc: bool, after: tuple[datetime, UUID] | None
    ) -> list[list[Any]]:
        """A phone search's batch: from its first candidates in list order from the key
        table (no time windows: the key table's order is the list's)."""

        async def read(keys: Sequence[Key] | int | None) -> list[list[Any]]:
            query = scroll_query(
                self._table,
                caller.tenant,
                filters,
                tz=caller.timezone,
                limit=limit,
                desc=desc,
                after=after,
                phone_keys=keys,
            )
            return await self.run(query.sql, query.params)

        return await self._phone_rows(
            caller.tenant, filters, read, desc=desc, after=after, enough=limit + 1, first=limit + 1
        )

    async def _phone_rows(
        self,
        tenant: str,
        filters: SearchFilters,
        read: Callable[[Sequence[Key] | int], Awaitable[list[list[Any]]]],
        *,
        desc: bool,
        after: tuple[datetime, UUID] | None,
        enough: int,
        first: int,
        window: Window = (None, None),
    ) -> list[list[Any]]:
        """A limited phone search: its first ``first`` candidates (in ``window``, past
        ``after``) from the key table, then ``read`` of their records; more candidates
        while fewer than ``enough`` rows came back and the key table had as many as asked
        for (another filter left some out, or a correction moved or renumbered a call).
        Up to ``MAX_LISTED_KEYS`` the read gets the keys as a list, beyond that their
        number (it reads them itself), and they are counted only when it came back short."""
        wanted = first
        while True:
            if wanted <= MAX_LISTED_KEYS:
                keys = phone_keys_query(
                    self._table, tenant, filters, desc=desc, after=after, keys=wanted, window=window
                )
                listed = [(_as_utc(started), id_) for started, id_ in await self.run(keys.sql, keys.params)]
                rows, found = (await read(listed) if listed else []), len(listed)
            else:
                rows = await read(wanted)
                if len(rows) >= enough:
                    return rows
                counted = phone_keys_query(
                    self._table, tenant, filters, desc=desc, after=after, keys=wanted, window=window, count=True
                )
                found = int((await self.run(counted.sql, counted.params))[0][0])
            if len(rows) >= enough or found < wanted:
                return rows
            wanted *= _MORE_KEYS

    async def _by_candidates(self, tenant: str, f: SearchFilters, *, more_than: int = 0) -> bool:
        """Whether a read of all the records of a phone search should read them by their
        candidate keys (``_CANDIDATES_A_GRANULE``); ``more_than``: what the caller already
        knows the candidates outnumber."""
        if not f.phones:
            return True  # no candidates to read by
        most = int(await self._tenant_granules(tenant, f) * _CANDIDATES_A_GRANULE)
        if most <= more_than:
            return False
        counted = phone_keys_query(self._table, tenant, f, desc=True, after=None, keys=most + 1, count=True)
        return int((await self.run(counted.sql, counted.params))[0][0]) <= most

    async def _tenant_granules(self, tenant: str, f: SearchFilters) -> int:
        """The granules of the tenant's range within the time bounds of ``f`` (from the
        primary index). Without bounds cached for a while, one entry a tenant: it changes as
        the tenant's calls do, and only decides how to read; bounds vary by request."""
        now, bounded = time.monotonic(), f.start is not None or f.end is not None
        cached = None if bounded else self._granules.get(tenant)
        if cached is not None and now - cached[0] < _EDGE_TTL_S:
            return cached[1]
        query = tenant_granules_query(self._table, tenant, f)
        granules = sum(int(row[-1]) for row in await self.run(query.sql, query.params))
        if not bounded:
            self._granules[tenant] = (now, granules)
        return granules

    async def _tenant_edge(self, tenant: str, *, latest: bool) -> datetime | None:
        """The tenant's earliest (latest) call, cached for a while. A stale value only
        costs speed: the first window is open towards the edge (no bound there), so
        calls older (newer) than the cached edge are still read."""
        now = time.monotonic()
        cached = self._edges.get((tenant, latest))
        if cached is not None and now - cached[0] < _EDGE_TTL_S:
            return cached[1]
        query = tenant_edge_query(self._table, tenant, latest=latest)
        found = await self.run(query.sql, query.params)
        edge = _as_utc(found[0][0]) if found and found[0][1] else None
        self._edges[(tenant, latest)] = (now, edge)
        return edge

    async def run(self, sql: str, params: dict[str, Any]) -> list[list[Any]]:
        return await self.guarded(self._store.query(sql, params))

    async def guarded(self, read: Awaitable[T]) -> T:
        """The read's result; a store failure as the API's error (503, with the reason)."""
        try:
            return await read
        except StoreError as exc:
            if exc.code in BUDGET:
                log.warning("read stopped by its budget", extra={"code": exc.code, "error": str(exc)[:300]})
                raise QueryBudgetExceeded(
                    "this request needs more time or memory than one read may use; narrow the date range or "
                    "filters, or read with scroll",
                    headers={"Retry-After": "5"},
                ) from exc
            if not isinstance(exc, StoreUnavailable):
                raise
            log.error("ClickHouse unavailable", extra={"error": str(exc)[:300]})
            raise Unavailable("the CDR store is unavailable; retry shortly", headers={"Retry-After": "5"}) from exc

    def claim_reads(self, tenant: str, reads: int) -> Callable[[], None]:
        """``reads`` more of the tenant's concurrent store reads, or a 429: a flood from one
        tenant holds at most this many of the shared ClickHouse readers."""
        return self._reads.claim(
            tenant,
            RateLimited(
                "this tenant has too many requests in progress; retry when one finishes", headers={"Retry-After": "1"}
            ),
            reads,
        )


def _same_filters(wanted: ListRequest, position: Position) -> None:
    """Filters repeated beside a scroll_id must be the ones it was issued for."""
    given = wanted.filters.canonical()
    for param in FILTER_PARAMS:
        if param not in wanted.given_filters:
            continue
        name = _FIELD_OF.get(param, param)
        if given.get(name) != position.filters.get(name):
            raise InvalidParameter(
                f"{param} differs from the filters this scroll_id was issued for; start a new scroll",
                param=param,
            )
    if wanted.order_given and wanted.order != position.order:
        raise InvalidParameter("order differs from the order of this scroll_id", param="order")


def _stat(row: list[Any]) -> dict[str, Any]:
    """One group's figures. ASR = answered / calls (4 decimals); ACD = mean billsec of the
    answered calls (2 decimals; null when none was answered). Runs once per group (8,760
    for a year by hour), so the counts come as the driver decodes them (Python ints from
    UInt columns) and the quantiles' field names are made once."""
    group, calls, answered, answered_billsec, billsec, quantiles = row
    figures: dict[str, Any] = {
        "group": group if isinstance(group, int) else str(group),
        "calls": calls,
        "answered": answered,
        "asr": round(answered / calls, 4) if calls else 0.0,
        "acd": round(answered_billsec / answered, 2) if answered else None,
        "total_billsec": billsec,
    }
    figures.update(zip(STAT_QUANTILE_FIELDS, quantiles, strict=True))
    return figures

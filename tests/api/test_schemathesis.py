"""The running API against its own OpenAPI document, with every schemathesis check.

Cases come from the document (positive and negative, boundary values of every bound and
pattern); each is sent over HTTP to the real server over a real embedded store.

One check is refined rather than dropped: ``positive_data_acceptance`` expects every
schema-valid request to succeed, but a few rules span values or need state that JSON
Schema cannot say (end before start, a date that does not exist or leaves the store's
range after conversion to UTC, pagination deeper than the limit, a cursor only the
server can sign, a feed started from a cursor and a time at once).
``_accepts_positive_data`` applies the same check and lets through only those 400s,
each recognised by the parameter and the rule the error names.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cdr.api.openapi import openapi_document
from tests.api.conftest import TOKENS, Api, api_settings

# The change stream never ends by design (SSE): a request/response check cannot read it
# whole. Its answers are tested by the SSE tests and its document by test_feed_docs.
schema = schemathesis.openapi.from_dict(openapi_document(api_settings(Path("/nonexistent")).api)).exclude(
    path="/v1/cdr/changes/stream"
)
# A negative value long enough (percent-encoded non-ASCII text) can push the URL past the
# server's limit: 414 / 431 are refusals too, with the API's JSON error.
_refusals = schema.config.checks.negative_data_rejection.expected_statuses
schema.config.checks.negative_data_rejection.expected_statuses = [*_refusals, "414", "431"]
# Unknown query parameters are ignored by contract (spec/API.md), so they are not negative
# data; the token is the test's own (``ignored_auth`` still checks requests without it).
schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)

# (parameter, words of the error message) a schema-valid request may still be refused with.
_RULES_BEYOND_SCHEMA = (
    ({"start_date", "end_date", "start_date_ended", "end_date_ended"}, ("calendar", "outside the range", "before")),
    ({"page"}, ("deepest pagination",)),
    ({"max_duration"}, ("must be above min_duration",)),
    ({"scroll_id"}, ("not valid", "malformed", "expired")),
    # A feed cursor is sealed by the server like a scroll_id; a feed starts from a cursor or
    # from since, not both, and since must lie within the feed's retention.
    ({"cursor"}, ("cursor",)),
    ({"since"}, ("one or the other", "retention", "in the future", "calendar", "outside the range")),
)


def _accepts_positive_data(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code == 400 and case.meta is not None and case.meta.generation.mode.is_positive:
        error = response.json().get("error", {})
        for params, words in _RULES_BEYOND_SCHEMA:
            if error.get("param") in params and any(w in error.get("message", "") for w in words):
                return None
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
async def test_api_conforms_to_its_document(api: Api, case: Any) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['t1.example']}"}
    if isinstance(case.query, dict) and "wait" in case.query and case.meta.generation.mode.is_positive:
        # A valid long poll waits up to 30 s for a change no example makes; 0 is as valid
        # and answers at once (waiting itself is tested in tests/integration/test_change_feed.py).
        case.query["wait"] = 0
    # The server runs on this test's event loop; the synchronous client must not block it.
    await asyncio.to_thread(
        case.call_and_validate,
        base_url=api.url,
        headers=headers,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[_accepts_positive_data],
    )

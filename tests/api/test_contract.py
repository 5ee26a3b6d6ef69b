"""Responses of the running API conform to its own OpenAPI document."""

from __future__ import annotations

from typing import Any

import jsonschema

from tests.api.conftest import Api


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


async def test_responses_match_openapi(api: Api) -> None:
    async with api.client() as client:
        document = (await client.get("/openapi.json")).json()
        page = (await client.get("/v1/cdr", params={"limit": "50"})).json()
        scroll = (await client.get("/v1/cdr")).json()
        one = (await client.get(f"/v1/cdr/{page['data'][0]['id']}")).json()
        error = (await client.get("/v1/cdr", params={"limit": "x"})).json()
    _validator(document, "Page").validate(page)
    _validator(document, "Scroll").validate(scroll)
    _validator(document, "Cdr").validate(one)
    _validator(document, "Error").validate(error)
    assert list(document["components"]["schemas"]["Cdr"]["properties"]) == list(one)


async def test_documented_paths_are_served(api: Api) -> None:
    async with api.client() as client:
        document = (await client.get("/openapi.json")).json()
        for path, operations in document["paths"].items():
            if "get" not in operations:
                continue  # POST /v1/webhooks/{name}/replay: tests/integration/test_webhooks.py
            # An endless stream: its status and headers are the answer.
            async with client.stream("GET", path.replace("{id}", "some-id")) as r:
                assert r.status_code in (200, 404), (path, r.status_code)
                assert r.status_code == 200 or path == "/v1/cdr/{id}"


async def test_ops_endpoints(api: Api) -> None:
    async with api.client(tenant=None) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["checks"]["schema"] == "current"
    assert "cdr_http_requests_total" in metrics.text
    assert 'route="/v1/cdr"' in metrics.text

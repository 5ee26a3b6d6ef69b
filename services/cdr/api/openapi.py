"""The API contract as OpenAPI 3.1, served at /openapi.json and checked in under schemas/."""

from __future__ import annotations

from typing import Any

from cdr import __version__
from cdr.settings import Settings

OPENAPI_FILE = "openapi.json"

_TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", "example": "2021-02-17 17:30:35"}
_DATE_PARAM = {
    "type": "string",
    "description": "YYYY-MM-DD (= 00:00:00), YYYY-MM-DD HH:MM:SS in the tenant's timezone, or RFC 3339 with offset.",
    "examples": ["2021-02-18", "2021-02-18 17:20:58", "2021-02-18T17:20:58+07:00"],
}


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    max_limit = settings.max_limit
    record_properties: dict[str, Any] = {
        "id": {"type": "string", "format": "uuid"},
        "sip_call_id": {"type": "string"},
        "cause": {"type": "string", "example": "NORMAL_CLEARING"},
        "duration": {"type": "integer", "minimum": 0, "description": "Whole call, seconds."},
        "billsec": {"type": "integer", "minimum": 0, "description": "Talk time, seconds."},
        "direction": {"type": "integer", "enum": [1, 2, 3], "description": "1 inbound, 2 outbound, 3 local."},
        "recording_url": {"type": "string", "description": "Empty when there is no recording."},
        "extension": {"type": "string"},
        "from_number": {"type": "string"},
        "to_number": {"type": "string"},
        "receive_dest": {"type": "string", "description": "Ring group or queue; empty when none."},
        "time_started": _TIME,
        "time_answered": {"anyOf": [_TIME, {"type": "string", "const": ""}], "description": "Empty if unanswered."},
        "time_ended": _TIME,
        "status": {"type": "string", "example": "ANSWERED"},
    }
    list_params = [
        _param("start_date", _DATE_PARAM, "Calls started at or after this time."),
        _param("end_date", _DATE_PARAM, "Calls started at or before this time."),
        _param("start_date_ended", _DATE_PARAM, "Calls ended at or after this time."),
        _param("end_date_ended", _DATE_PARAM, "Calls ended at or before this time."),
        _param("duration", {"type": "integer", "minimum": 0}, "Duration equals this many seconds."),
        _param("min_duration", {"type": "integer", "minimum": 0}, "Duration strictly greater than this."),
        _param("extension", {"type": "string", "maxLength": 256}, "Extension that made or received the call."),
        _param("recordingfile", {"type": "string", "maxLength": 256}, "Recording file name, e.g. abcd.mp3."),
        _param("status", {"type": "string", "maxLength": 256}, "Call status, case-insensitive, e.g. ANSWERED."),
        _param(
            "phone",
            {"type": "string", "pattern": r"^\+?\d{1,20}$"},
            "From or to this number; national and international forms match each other.",
        ),
        _param(
            "direction",
            {"type": "string", "enum": ["inbound", "outbound", "local", "1", "2", "3"]},
            "Call direction (case-insensitive).",
        ),
        _param(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": max_limit},
            f"Records per response (default {settings.default_limit}).",
        ),
        _param("page", {"type": "integer", "minimum": 1}, "Page number (pagination mode)."),
        _param("offset", {"type": "integer", "minimum": 0}, "Start position; replaces page (pagination mode)."),
        _param("scroll_id", {"type": "string"}, "Cursor from the previous scroll response."),
        _param("scroll", {"type": "boolean"}, "Force scroll mode even with limit (choose the first batch size)."),
        _param("order", {"type": "string", "enum": ["asc", "desc"]}, "By time_started then id (default asc)."),
    ]
    common_errors = {
        "400": _error("A parameter or scroll_id is invalid; `param` names it."),
        "401": _error("Missing, malformed or unknown bearer token."),
        "429": _error("Too many requests."),
        "503": _error("ClickHouse is unavailable; retry after Retry-After seconds."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CDR API",
            "version": __version__,
            "description": (
                "Call detail records of a cloud PBX tenant. Every request is confined to the token's tenant."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/cdr": {
                "get": {
                    "operationId": "listCdrs",
                    "summary": "List CDRs: scroll (default) or pagination (page/limit/offset).",
                    "parameters": list_params,
                    "responses": {
                        "200": {
                            "description": "A page or a scroll batch.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Page"},
                                            {"$ref": "#/components/schemas/Scroll"},
                                        ]
                                    }
                                }
                            },
                        },
                        **common_errors,
                    },
                }
            },
            "/v1/cdr/{id}": {
                "get": {
                    "operationId": "getCdr",
                    "summary": "One CDR by id or SIP Call-ID.",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "description": "CDR id or sip_call_id.",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The CDR.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Cdr"}}},
                        },
                        "404": _error("No such CDR for this tenant."),
                        **common_errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "summary": "Process alive.",
                    "responses": {"200": {"description": "Alive."}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "security": [],
                    "summary": "ClickHouse reachable, schema current.",
                    "responses": {"200": {"description": "Ready."}, "503": {"description": "Not ready."}},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "security": [],
                    "summary": "Prometheus metrics.",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "summary": "This document.",
                    "responses": {"200": {"description": "OpenAPI 3.1."}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Cdr": {
                    "type": "object",
                    "properties": record_properties,
                    "required": list(record_properties),
                    "additionalProperties": False,
                },
                "Page": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Cdr"}},
                        "limit": {"type": "integer"},
                        "page": {"type": "integer"},
                        "total": {"type": "integer"},
                    },
                    "required": ["data", "limit", "page", "total"],
                },
                "Scroll": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Cdr"}},
                        "scroll_id": {"type": ["string", "null"], "description": "Null when nothing more to read."},
                    },
                    "required": ["data", "scroll_id"],
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "enum": [
                                        "invalid_parameter",
                                        "invalid_scroll_id",
                                        "unauthorized",
                                        "not_found",
                                        "rate_limited",
                                        "unavailable",
                                        "method_not_allowed",
                                        "internal",
                                    ],
                                },
                                "message": {"type": "string"},
                                "param": {"type": "string"},
                            },
                            "required": ["code", "message"],
                        }
                    },
                    "required": ["error"],
                },
            },
        },
    }

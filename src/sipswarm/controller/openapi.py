"""The OpenAPI 3.1 document of the controller's REST API (``GET /api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {"type": "string"},
                    "issues": {"type": "array", "items": {"type": "string"}},
                    "problems": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "path": {"type": "string"},
                                "line": {"type": ["integer", "null"]},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
                "required": ["error"],
            }
        }
    },
}
STATUSES = [
    "PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANNOT_RUN_FOR_NOW", "STOPPING",
    "CANCELLED",
]  # fmt: skip


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def _schemas() -> dict[str, Any]:
    entry = {
        "type": "object",
        "properties": {
            "ts": {"type": "integer", "description": "Unix epoch ms"},
            "status": {"type": "string", "enum": STATUSES},
            "reason": {"type": "string"},
        },
    }
    return {
        "Run": {
            "type": "object",
            "properties": {
                "run_id": {"type": "string"},
                "name": {"type": "string"},
                "status": {"type": "string", "enum": STATUSES},
                "reason": {"type": "string"},
                "timeline": {"type": "array", "items": entry},
                "phases": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "endpoints by their latest phase (PENDING: none yet)",
                },
                "aggregates": {
                    "type": "object",
                    "description": "overall and per group; `metrics` holds the threshold names",
                    "properties": {
                        "overall": {"type": "object"},
                        "groups": {"type": "object", "additionalProperties": {"type": "object"}},
                    },
                },
                "thresholds": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "expression": {"type": "string"},
                            "actual": {"type": ["number", "null"]},
                            "passed": {"type": "boolean"},
                        },
                    },
                },
            },
            "required": ["run_id", "status", "timeline"],
        },
        "Metrics": {
            "type": "object",
            "properties": {
                "run_id": {"type": "string"},
                "series": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "ts": {"type": "integer"},
                            "phases": {
                                "type": "object",
                                "additionalProperties": {"type": "integer"},
                            },
                            "active_calls": {"type": "integer"},
                            "mos": {"type": ["number", "null"]},
                            "jitter_ms": {"type": ["number", "null"]},
                            "loss": {"type": ["number", "null"]},
                            "rtt_ms": {"type": ["number", "null"]},
                            "generator_overloaded": {"type": ["boolean", "null"]},
                        },
                    },
                },
            },
        },
        "Workers": {
            "type": "object",
            "properties": {"workers": {"type": "array", "items": {"type": "object"}}},
        },
        "Runs": {
            "type": "object",
            "properties": {"runs": {"type": "array", "items": {"type": "object"}}},
        },
    }


# Content types a plan may be posted as, all read as YAML (JSON is YAML too): the YAML
# and JSON types, text/plain, and application/x-www-form-urlencoded because it is what
# `curl --data-binary @plan.yaml` and urllib send by default. Anything else (a form
# upload with `curl -F`, XML, ...) is 415.
PLAN_TYPES = frozenset(
    {
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/x-yaml",
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
    }
)


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document; ``version`` is the sipswarm version."""
    plan_body = {
        "required": True,
        "description": "a plan file (docs/plan.md), YAML or JSON",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sipswarm controller API",
            "version": version,
            "description": "Submit plans, follow runs, read results. Workers connect over "
            "a WebSocket at /v1/worker on the worker listener (PROTOCOL.md), not here.",
        },
        "paths": {
            "/api/v1/runs": {
                "post": {
                    "summary": "Submit a plan; the run starts at once",
                    "requestBody": plan_body,
                    "responses": {
                        "201": _json("Run", "the new run"),
                        "400": ERROR,
                        "413": ERROR,
                        "415": ERROR,
                    },
                },
                "get": {
                    "summary": "List runs",
                    "responses": {"200": _json("Runs", "every stored run")},
                },
            },
            "/api/v1/runs/{run_id}": {
                "get": {
                    "summary": "Status, timeline, aggregates and thresholds of a run",
                    "parameters": [RUN_ID],
                    "responses": {"200": _json("Run", "the run"), "404": ERROR},
                }
            },
            "/api/v1/runs/{run_id}/metrics": {
                "get": {
                    "summary": "Per-second series of a run",
                    "parameters": [
                        RUN_ID,
                        {"name": "since", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": _json("Metrics", "the series"),
                        "400": ERROR,
                        "404": ERROR,
                    },
                }
            },
            "/api/v1/runs/{run_id}/report": {
                "get": {
                    "summary": "Self-contained HTML report of a run",
                    "parameters": [RUN_ID],
                    "responses": {
                        "200": {"description": "HTML", "content": {"text/html": {}}},
                        "404": ERROR,
                    },
                }
            },
            "/api/v1/runs/{run_id}/cancel": {
                "post": {
                    "summary": "Cancel a run (STOPPING, then CANCELLED)",
                    "parameters": [RUN_ID],
                    "responses": {
                        "200": _json("Run", "already terminal, or cancelled at once"),
                        "202": _json("Run", "stopping"),
                        "404": ERROR,
                        "409": ERROR,
                    },
                }
            },
            "/api/v1/workers": {
                "get": {
                    "summary": "Connected and known workers",
                    "responses": {"200": _json("Workers", "workers")},
                }
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}
            },
        },
        "components": {"schemas": _schemas()},
    }

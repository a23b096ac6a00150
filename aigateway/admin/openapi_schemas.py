"""The shapes the OpenAPI document (openapi.py) refers to: errors, budgets, keys, users,
usage, refusals and the charts' series, as components/schemas and the references to them."""

from __future__ import annotations

from typing import Any

from ..db.series import MEASURES
from ..records import LIMIT_FIELDS

OBJECT = {"type": "object"}
ERROR = {"$ref": "#/components/schemas/Error"}
BUDGET = {"$ref": "#/components/schemas/Budget"}

# What a key carries besides its identity: limits (null: the default), allow-list, budget.
KEY_SETTINGS = {
    **{name: {"type": ["integer", "null"]} for name in LIMIT_FIELDS},
    "models": {"type": ["array", "null"], "items": {"type": "string"}},
    "budget": BUDGET,
    "priority": {
        "enum": ["high", "normal", "low", None],
        "description": "its class where the gateway queues; null: its user's",
    },
}
USER_PRIORITY = {
    "enum": ["high", "normal", "low"],
    "description": "the class of its keys that have none of their own (default normal)",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "description": "Ollama's shape; on /v1 OpenAI's or Anthropic's own error shape.",
        "type": "object",
        "properties": {"error": {}},
        "required": ["error"],
    },
    "Budget": {
        "type": ["object", "null"],
        "properties": {
            "amount": {"type": "integer", "minimum": 0, "description": "micro-units"},
            "period": {"enum": ["total", "daily", "weekly", "monthly"]},
            "alert_percent": {"type": ["integer", "null"], "minimum": 1, "maximum": 100},
        },
        "required": ["amount"],
    },
    "Key": {
        "type": "object",
        "properties": {
            "refused": {
                "description": "GET of one key only: its refusals for since/until",
                "$ref": "#/components/schemas/RefusedOf",
            },
            "id": {"type": "integer"},
            "user": {"type": "string"},
            "key_name": {"type": "string"},
            "prefix": {"type": "string"},
            "role": {"enum": ["admin", "user"]},
            "status": {"type": "string"},
            "created_by": {
                "type": ["integer", "null"],
                "description": "the key that made it by self-service; null: an admin",
            },
            **KEY_SETTINGS,
            "queue_class": {
                "enum": ["high", "normal", "low"],
                "description": "the class it queues in: its own, else its user's",
            },
        },
    },
    "KeyChange": {
        "type": "object",
        "properties": {
            "user": {"type": "string"},
            "name": {"type": "string"},
            "role": {"enum": ["admin", "user"]},
            "expires_at": {"type": ["number", "null"]},
            "expires_days": {"type": "integer"},
            **KEY_SETTINGS,
        },
        "additionalProperties": False,
    },
    "User": {
        "type": "object",
        "properties": {
            "refused": {
                "description": "GET of one user only: its keys' refusals for since/until",
                "$ref": "#/components/schemas/RefusedOf",
            },
            "id": {"type": "integer"},
            "user": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "note": {"type": ["string", "null"]},
            "status": {"enum": ["active", "disabled"]},
            "active_keys": {"type": "integer"},
            "budget": BUDGET,
            "priority": USER_PRIORITY,
        },
    },
    "UserChange": {
        "type": "object",
        "properties": {
            "user": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "note": {"type": ["string", "null"]},
            "disabled": {"type": "boolean"},
            "budget": BUDGET,
            "priority": USER_PRIORITY,
        },
        "additionalProperties": False,
    },
    "Price": {
        "type": "object",
        "properties": {
            "pattern": {"type": "string"},
            "per_request": {"type": "integer", "minimum": 0},
            "per_million_input": {"type": "integer", "minimum": 0},
            "per_million_output": {"type": "integer", "minimum": 0},
            "per_second": {"type": "integer", "minimum": 0},
        },
        "required": ["pattern"],
    },
    "Alias": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "the name clients ask for: gpt-4o-mini"},
            "target": {"type": "string", "description": "the model it runs: llama3.2"},
            "user": {"type": ["string", "null"], "description": "only this user's keys"},
            "key_id": {"type": ["integer", "null"], "description": "only this key"},
        },
        "required": ["name", "target"],
        "additionalProperties": False,
    },
    "CompatKey": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "preview": {"type": "string", "description": "the key's first 12 characters"},
            "name": {"type": "string"},
            "user": {"type": "string"},
            "role": {"enum": ["admin", "user"]},
            "rate_limit": {
                "type": ["integer", "null"],
                "description": "requests per hour; null: DEFAULT_RPH; 0: no limit",
            },
            "active": {"type": "boolean"},
            "status": {"type": "string"},
            "created_at": {"type": ["string", "null"], "format": "date-time"},
            "last_used_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "CompatKeyCreate": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "role": {"enum": ["admin", "user"]},
            "rate_limit": {"type": ["integer", "null"], "minimum": 0},
            "user": {"type": "string", "description": "default: the name"},
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    "SignIn": {
        "type": "object",
        "properties": {"key": {"type": "string"}},
        "required": ["key"],
    },
    "RefusedCount": {
        "type": "object",
        "properties": {
            "requests": {"type": "integer", "description": "requests refused"},
            "by_reason": {
                "type": "object",
                "description": "requests refused per reason (errors.Refused: rate_limit,"
                " over_budget, unknown_key, ...); reasons with none are left out",
                "additionalProperties": {"type": "integer"},
            },
        },
    },
    "Refused": {
        "description": "Requests the gateway refused itself (401, 402, 403, 408, 413, 429,"
        " 503 with a `reason`), counted per whole hour: every hour that overlaps"
        " since/until counts whole. Written by each gateway every flush interval.",
        "allOf": [
            {"$ref": "#/components/schemas/RefusedCount"},
            {
                "type": "object",
                "properties": {
                    "per_user": {
                        "type": "array",
                        "items": {
                            "allOf": [
                                {"$ref": "#/components/schemas/RefusedCount"},
                                {"type": "object", "properties": {"user": {"type": "string"}}},
                            ]
                        },
                    },
                    "per_key": {
                        "type": "array",
                        "description": "keys the gateway holds, refused while they did not work"
                        " (revoked, expired, user disabled) or over a limit",
                        "items": {
                            "allOf": [
                                {"$ref": "#/components/schemas/RefusedCount"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "key_id": {"type": "integer"},
                                        "user": {"type": "string"},
                                        "key_name": {"type": "string"},
                                    },
                                },
                            ]
                        },
                    },
                    "without_key": {
                        "description": "refused before a key was known (none sent, a"
                        " malformed or an unknown one): one count, never per key sent",
                        "$ref": "#/components/schemas/RefusedCount",
                    },
                },
            },
        ],
    },
}
# One key's or user's refusals for since/until (default: the last 7 days).
SCHEMAS["RefusedOf"] = {
    "allOf": [
        {"$ref": "#/components/schemas/Refused"},
        {
            "type": "object",
            "properties": {"since": {"type": "number"}, "until": {"type": ["number", "null"]}},
        },
    ]
}
REFUSED = {"$ref": "#/components/schemas/Refused"}
PER_BUCKET = {"type": "array", "items": {"type": "integer"}}
# What GET /admin/series?range= answers (with ?hours= alone: {bucket_seconds, since,
# series: [{start, requests, ...}]}, the hours with a request only).
SCHEMAS["Series"] = {
    "type": "object",
    "description": "Every bucket of the range, oldest first: `starts` holds each one's"
    " start (Unix time; hours on the hour, days at 00:00 UTC) and each group a list of the"
    " same length per measure (cost in micro-units). Groups: one (`name` null) for the"
    " total, or the `top` models or users with the most requests in the range (a record"
    ' without a model: `name` ""), most first, then one with `other` true for the'
    " rest; a group with no request is left out.",
    "properties": {
        "range": {"type": "string", "enum": ["24h", "7d", "30d"]},
        "split": {"type": "string", "enum": ["total", "model", "user"]},
        "scope": {"type": "string", "enum": ["gateway", "me"]},
        "bucket_seconds": {"type": "integer", "enum": [3600, 86400]},
        "starts": PER_BUCKET,
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": ["string", "null"]},
                    "other": {"type": "boolean"},
                    **{m: PER_BUCKET for m in MEASURES},
                },
            },
        },
    },
}
SERIES = {"$ref": "#/components/schemas/Series"}
# What GET and DELETE /admin/cache answer (admin/cacheroutes.py).
SCHEMAS["Cache"] = {
    "type": "object",
    "description": "Each gateway keeps its own response cache in memory: its stats are"
    " those of the gateway that answered (`gateway`: its id, as Now shows it).",
    "properties": {
        "enabled": {"type": "boolean", "description": "false: CACHE_SIZE is 0"},
        "gateway": {"type": "string"},
        "per_gateway": {"type": "string", "description": "says the above, in the answer"},
        "settings": {
            "type": "object",
            "properties": {
                "size": {"type": "integer", "description": "CACHE_SIZE in bytes; 0: off"},
                "ttl_seconds": {"type": "number"},
                "routes": {"type": "array", "items": {"type": "string"}},
                "models": {"type": "array", "items": {"type": "string"}},
                "scope": {"enum": ["user", "key", "global"]},
                "hit_price": {"enum": ["free", "full"]},
            },
        },
        "stats": {
            "type": ["object", "null"],
            "description": "since the gateway started; null when the cache is off",
            "properties": {
                "capacity_bytes": {"type": "integer"},
                "bytes": {"type": "integer", "description": "held, overheads counted"},
                "entries": {"type": "integer", "description": "answers held"},
                "hits": {"type": "integer"},
                "misses": {"type": "integer"},
                "hit_rate": {
                    "type": ["number", "null"],
                    "description": "hits / (hits + misses), 0 to 1; null before a lookup",
                },
                "stored": {"type": "integer"},
                "evicted": {"type": "integer", "description": "dropped for room"},
                "ttl_seconds": {"type": "number"},
            },
        },
    },
    "required": ["enabled", "gateway", "settings", "stats"],
}
SCHEMAS["CacheCleared"] = {
    "type": "object",
    "properties": {
        "dropped": {"type": "integer", "description": "answers dropped"},
        "gateway": {"type": "string"},
    },
    "required": ["dropped", "gateway"],
}

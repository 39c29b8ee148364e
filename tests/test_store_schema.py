"""Schemathesis against the store server's /openapi.json: generated requests (valid and invalid) never
get a 5xx, and the responses match the documented schemas and status codes. Each operation is called with
a key of a role it allows (schemathesis also checks that it refuses a request without one)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings

from signing_keys import StoreKeys
from store_clients import bearer
from tillface.store.api import create_app, guard_of
from tillface.store.auth import create_key
from tillface.store.config import load_store_config
from tillface.store.service import StoreServer

# Reproducible by default; TILLFACE_FUZZ_EXAMPLES=500 explores further with fresh random data.
EXAMPLES = int(os.environ.get("TILLFACE_FUZZ_EXAMPLES", "40"))
DERANDOMIZE = "TILLFACE_FUZZ_EXAMPLES" not in os.environ
# Loaded at collection time (schemathesis parametrizes from the schema); the folder goes with the process.
_FOLDER = tempfile.TemporaryDirectory(prefix="tillface-store-schema-")
_SIGNING = StoreKeys(Path(_FOLDER.name) / "store-keys")
_CONFIG = load_store_config(
    None,
    {
        "store": {"database_url": f"sqlite:///{Path(_FOLDER.name) / 'store.db'}"},
        # The in-process client's Host is "testserver"; the rate limit has its own test (test_store_auth.py).
        "http": {"allowed_hosts": ["testserver"], "receipts_per_minute": 100_000},
        "keys": {"dir": _SIGNING.dir},
    },
)
# Not connected to a broker: no till answers, and nothing the generated requests reach waits on MQTT.
_SERVER = StoreServer(_CONFIG)
_APP = create_app(_SERVER)
_KEYS = {
    role: create_key(_SERVER.sessions, role, f"schemathesis {role}")[1]
    for role in ("till-pos", "cashier", "manager")
}
# (METHOD, path) -> the headers of a key of the first role the operation allows.
_AUTH = {
    (method, route.path): bearer(_KEYS[guard.roles[0]])
    for route in _APP.routes
    if isinstance(route, APIRoute) and (guard := guard_of(route)) is not None
    for method in route.methods
}
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck)
)
def test_api_never_fails_with_a_server_error(case):
    # FastAPI answers OPTIONS with a 405 that lists one method per route (not a contract issue).
    excluded = [schemathesis.checks.allow_header_conformance]
    if case.operation.method.upper() == "POST" and case.operation.path == "/members":
        # A schema-valid phone string may still not be a phone number: refused with a 422 by design.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    # Where the case carries a (generated, meaningless) bearer token, it gets a real key of an allowed
    # role instead; a case made without one (a negative case: "Authorization missing") stays without.
    headers = {}
    if "authorization" in {name.lower() for name in case.headers or {}}:
        headers = _AUTH[(case.operation.method.upper(), case.operation.path)]
    case.call_and_validate(headers=headers, excluded_checks=excluded)

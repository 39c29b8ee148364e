"""The store server's HTTP API (FastAPI; the OpenAPI document is served at /openapi.json).

Every endpoint needs an API key (`Authorization: Bearer tfk_...`, made by `tillface store-admin
key-create`) of a role it allows (listed in each operation's description and `x-roles`): no or a bad
key gets 401 with `WWW-Authenticate: Bearer`, a key of another role 403. Host headers other than
`[http] allowed_hosts` get 400 (DNS rebinding). `POST /receipts` is limited to `[http]
receipts_per_minute` per key (429 with Retry-After) and `[store] max_points_per_receipt` (422).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..link.schemas import Id, VisitorCode
from . import audit
from .auth import CASHIER, MANAGER, TILL_POS, BadKey, Principal, active_keys, authenticate
from .config import StoreConfig
from .service import StoreError, StoreKeyError, StoreServer

log = logging.getLogger("tillface.store.api")

# Whitespace as pydantic's regex engine reads `\s` (Unicode White_Space). Other engines (client code
# generators, fuzzers) read `\s` slightly differently, so the published patterns spell it out.
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
VISIBLE = f"[^{WHITESPACE}]"
# The link's Id, with its published pattern spelled out the same way.
ApiId = Annotated[
    Id,
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 128, "pattern": f"^[^{WHITESPACE}/+#]+$"}),
]
# Free text with at least one visible character (kept as given: the schema says exactly what passes).
Name = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=VISIBLE)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=VISIBLE)]
# An amount in currency units: a JSON number or a decimal string; rounded to cents (half to even).
Money = Annotated[
    Decimal,
    Field(ge=0, le=Decimal("1000000")),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1000000},
                {"type": "string", "pattern": r"^[0-9]{1,6}(\.[0-9]{1,6})?$"},
            ]
        }
    ),
]


def cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1)))


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConsentIn(Body):
    text_version: Short = Field(description="version of the consent text the customer agreed to")
    channel: Short = Field(description="how consent was given, e.g. 'till-screen', 'paper'")


class MemberIn(Body):
    phone: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    name: Name
    visitor_code: VisitorCode
    till: ApiId
    consent: ConsentIn


class ConsentOut(BaseModel):
    text_version: str
    channel: str
    given_at: datetime
    till: str


class MemberOut(BaseModel):
    id: str
    name: str
    phone: str
    points: int
    created_at: datetime
    enrolled_till: str | None
    consents: list[ConsentOut]
    last_purchase: str | None
    suggestions: list[str]


class VisitorOut(BaseModel):
    till: str
    visit_id: str
    visitor_code: str | None
    seen_at: datetime
    enroll_until: datetime | None


class ItemIn(Body):
    sku: Short
    name: Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=VISIBLE)]
    qty: int = Field(ge=1, le=10_000)
    price: Money = Field(description="unit price")


class ReceiptIn(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [key], "properties": {key: {"type": "string"}}}
                for key in ("visit_id", "member_id")
            ]
        },
    )

    visit_id: ApiId | None = None
    till: ApiId | None = Field(default=None, description="the visit's till, if visit ids may repeat")
    member_id: ApiId | None = None
    items: list[ItemIn] = Field(min_length=1, max_length=500)
    total: Money

    @model_validator(mode="after")
    def _bound(self) -> ReceiptIn:
        if self.visit_id is None and self.member_id is None:
            raise ValueError("give visit_id or member_id to bind the receipt to")
        return self


class ReceiptOut(BaseModel):
    receipt_id: int
    member_id: str | None
    visit_id: str | None
    points_awarded: int
    points_total: int | None


class EraseOut(BaseModel):
    member_id: str
    erased: bool
    acknowledged: list[str] = Field(description="tills that confirmed with event/erased")
    queued: list[str] = Field(description="tills that have not confirmed yet; they apply it on reconnect")


class AuditOut(BaseModel):
    id: int
    at: datetime
    key_id: str | None = Field(description="the API key's id; null for the store server's own console")
    key_name: str
    role: str | None
    action: str = Field(description="enrol, enrol-undone, erase, points, key-create, key-revoke, refused")
    member_id: str | None
    points: int | None
    detail: str | None


class Problem(BaseModel):
    detail: Any


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no API key, or an unknown, malformed or revoked one"},
    403: {"model": Problem, "description": "the key's role may not do this"},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    **{code: {"model": Problem} for code in (400, 404, 409, 410, 422, 504)},
}

bearer = HTTPBearer(
    scheme_name="StoreApiKey",
    bearerFormat="tfk_<id>_<secret>",
    description="An API key made by `tillface store-admin key-create --role ROLE --name NAME`.",
    auto_error=False,
)


class Guard:
    """The dependency of one endpoint: the request's key must be valid and of one of `roles`."""

    def __init__(self, server: StoreServer, roles: tuple[str, ...]) -> None:
        self.server = server
        self.roles = roles

    def __call__(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> Principal:
        what = f"{request.method} {getattr(request.scope.get('route'), 'path', request.url.path)}"
        if credentials is None:
            raise _unauthorised("an API key is needed: send 'Authorization: Bearer <key>'")
        try:
            who = authenticate(self.server.sessions, credentials.credentials)
        except BadKey as exc:
            log.warning("refused %s from %s: %s", what, _client(request), exc)
            raise _unauthorised(str(exc), error="invalid_token") from None
        if who.role not in self.roles:
            detail = f"key {who.key_id} ({who.role}) may not {what}: it needs {' or '.join(self.roles)}"
            log.warning("refused %s from %s: %s", what, _client(request), detail)
            audit.record_now(self.server.sessions, who.actor(), audit.REFUSED, detail=detail)
            raise HTTPException(status_code=403, detail=detail)
        return who


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _unauthorised(detail: str, error: str = "") -> HTTPException:
    challenge = 'Bearer realm="tillface-store"' + (f', error="{error}"' if error else "")
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


def guard_of(route: APIRoute) -> Guard | None:
    """The Guard on a route, if any (for the OpenAPI text and tests/test_store_auth.py)."""
    for dependant in route.dependant.dependencies:
        if isinstance(dependant.call, Guard):
            return dependant.call
    return None


class RateLimit:
    """At most `per_minute` calls per key in any 60 s (a sliding window kept in memory)."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0 if the call may go ahead (and counts), else the seconds until it may."""
        moment = time.monotonic()
        with self._lock:
            calls = self._calls.setdefault(key_id, deque())
            while calls and calls[0] <= moment - self.window_s:
                calls.popleft()
            if len(calls) >= self.per_minute:
                return calls[0] + self.window_s - moment
            calls.append(moment)
            return 0.0


def create_app(server: StoreServer, manage: bool = False) -> FastAPI:
    """The API over `server`; with `manage`, the app starts and stops the server's MQTT side too."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage:
            server.start()
        try:
            yield
        finally:
            if manage:
                server.stop()

    app = FastAPI(
        title="tillface store server",
        version="1",
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,  # no Swagger/ReDoc pages (they load scripts from a CDN); /openapi.json stays
        redoc_url=None,
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(server.config))
    receipts = RateLimit(server.config.http.receipts_per_minute)

    def allow(*roles: str) -> Any:
        return Security(Guard(server, roles))

    # Who may call what (each endpoint names one of these; tests/test_store_auth.py holds the table).
    pos_or_desk = allow(TILL_POS, CASHIER, MANAGER)
    desk = allow(CASHIER, MANAGER)
    pos = allow(TILL_POS)
    manager = allow(MANAGER)

    @app.exception_handler(StoreError)
    def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.get("/visitors", response_model=list[VisitorOut], responses=AUTH_ERRORS)
    def visitors(_who: Principal = pos_or_desk, till: ApiId | None = None) -> list[dict[str, Any]]:
        """Visitor codes still open for enrolment (with their till and enroll_until), newest first;
        `till` narrows the list to one till."""
        return [v for v in server.visitors() if till is None or v["till"] == till]

    @app.post("/members", response_model=MemberOut, status_code=201, responses=ERRORS)
    def create_member(body: MemberIn, who: Principal = desk) -> dict[str, Any]:
        """Enrol a visitor with consent: records the consent, sends cmd/enroll, waits for event/enrolled."""
        with audit.acting(who.actor(), audit.ENROL):
            return server.enroll(
                body.phone,
                body.name,
                body.visitor_code,
                body.till,
                body.consent.text_version,
                body.consent.channel,
            )

    @app.get("/members/{member_id}", response_model=MemberOut, responses=ERRORS)
    def get_member(member_id: str, _who: Principal = desk) -> dict[str, Any]:
        return server.member(member_id)

    @app.delete("/members/{member_id}", response_model=EraseOut, responses=ERRORS)
    def erase_member(member_id: str, who: Principal = manager) -> dict[str, Any]:
        """Erase here and at every till (retained tombstone); waits for the online tills' event/erased."""
        with audit.acting(who.actor(), audit.ERASE):
            return server.erase(member_id)

    @app.post(
        "/receipts",
        response_model=ReceiptOut,
        status_code=201,
        responses={**ERRORS, 429: {"model": Problem, "description": "over [http] receipts_per_minute"}},
    )
    def add_receipt(body: ReceiptIn, who: Principal = pos) -> Any:
        """Bind a receipt to a visit or member and accrue points (store.points_per_unit per whole unit;
        more than store.max_points_per_receipt is refused with 422 and nothing is written)."""
        wait_s = receipts.take(who.key_id)
        if wait_s:
            log.warning("key %s over %d receipts a minute", who.key_id, receipts.per_minute)
            return JSONResponse(
                status_code=429,
                content={"detail": f"more than {receipts.per_minute} receipts a minute for key {who.key_id}"},
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
        items = [(i.sku, i.name, i.qty, cents(i.price)) for i in body.items]
        with audit.acting(who.actor(), audit.POINTS):
            return server.add_receipt(
                items, cents(body.total), visit_id=body.visit_id, till=body.till, member_id=body.member_id
            )

    @app.get("/tills", responses=AUTH_ERRORS)
    def tills(_who: Principal = manager) -> dict[str, Any]:
        """Each till's retained status and last health report."""
        return {t: {"status": s.status, "health": s.health} for t, s in sorted(server.tills.items())}

    @app.get("/audit", response_model=list[AuditOut], responses=AUTH_ERRORS)
    def audit_log(
        _who: Principal = manager,
        member_id: ApiId | None = None,
        before: Annotated[int | None, Query(ge=1, description="entries older than this id")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """The audit, newest first: who (key id, name, role), when, action, member, points."""
        return audit.entries(server.sessions, member_id=member_id, limit=limit, before=before)

    from .web import mount_web  # the cashier's page, /till/<till_id> (its own cookie login; web.py)

    mount_web(app, server)
    for route in app.routes:
        if isinstance(route, APIRoute) and (guard := guard_of(route)) is not None:
            route.openapi_extra = {**(route.openapi_extra or {}), "x-roles": list(guard.roles)}
            route.description = f"{route.description}\n\nRoles: {', '.join(guard.roles)}.".lstrip()
    return app


def allowed_hosts(config: StoreConfig) -> list[str]:
    """`[http] allowed_hosts`, plus the bind address when it is one address (not a wildcard)."""
    hosts = list(config.http.allowed_hosts)
    bind = config.http.host
    try:
        address = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        return hosts
    if not address.is_unspecified:
        name = f"[{address}]" if address.version == 6 else str(address)
        if name not in hosts:
            hosts.append(name)
    return hosts


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def start_problem(config: StoreConfig, keys: Callable[[], int]) -> str | None:
    """Why the store server must not start with `config` (one line naming the fix), or None."""
    h = config.http
    if (h.cert_file is None) != (h.key_file is None):
        return "http.cert_file and http.key_file go together: set both in store.toml's [http] (or neither)"
    for name, path in (("cert_file", h.cert_file), ("key_file", h.key_file)):
        if path is not None and not path.is_file():
            return f"http.{name}: {path} is not a readable file; fix [http] {name} in store.toml"
    if is_loopback(h.host):
        return None
    if h.cert_file is None:
        return (
            f"http.host = {h.host!r} is reachable from the LAN but the API has no TLS: set [http] cert_file "
            "and key_file in store.toml, or bind 127.0.0.1"
        )
    if keys() == 0:
        return (
            f"http.host = {h.host!r} is reachable from the LAN but no API key exists: "
            "tillface store-admin key-create --role manager --name NAME --config store.toml"
        )
    return None


def serve(config: StoreConfig) -> int:
    """Run the store server until Ctrl-C / SIGTERM: MQTT side plus the HTTP API (uvicorn)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    try:
        server = StoreServer(config)
    except (SQLAlchemyError, ImportError) as exc:
        print(f"store.database_url: cannot open {config.store.database_url}: {exc}", file=sys.stderr)
        return 1
    except StoreKeyError as exc:
        print(f"tillface store: {exc}", file=sys.stderr)
        return 78
    problem = start_problem(config, lambda: active_keys(server.sessions))
    if problem is not None:
        print(f"tillface store: {problem}", file=sys.stderr)
        return 78
    if not active_keys(server.sessions):
        log.warning(
            "no API key yet: every request will get 401 "
            "(tillface store-admin key-create --role ROLE --name NAME --config store.toml)"
        )
    app = create_app(server, manage=True)
    h = config.http
    # On SIGTERM uvicorn shuts the app down (stopping the MQTT side) and then re-raises the signal.
    uvicorn.run(
        app,
        host=h.host,
        port=h.port,
        log_level="info",
        ssl_certfile=str(h.cert_file) if h.cert_file else None,
        ssl_keyfile=str(h.key_file) if h.key_file else None,
    )
    return 0

"""The store server's HTTP API (FastAPI; the OpenAPI document is served at /openapi.json)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from ..link.schemas import Id, VisitorCode
from .config import StoreConfig
from .service import StoreError, StoreServer

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


class Problem(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 404, 409, 410, 422, 504)
}


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

    app = FastAPI(title="tillface store server", version="1", description=__doc__, lifespan=lifespan)

    @app.exception_handler(StoreError)
    def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.get("/visitors", response_model=list[VisitorOut])
    def visitors(till: ApiId | None = None) -> list[dict[str, Any]]:
        """Visitor codes still open for enrolment (with their till and enroll_until), newest first;
        `till` narrows the list to one till."""
        return [v for v in server.visitors() if till is None or v["till"] == till]

    @app.post("/members", response_model=MemberOut, status_code=201, responses=ERRORS)
    def create_member(body: MemberIn) -> dict[str, Any]:
        """Enrol a visitor with consent: records the consent, sends cmd/enroll, waits for event/enrolled."""
        return server.enroll(
            body.phone,
            body.name,
            body.visitor_code,
            body.till,
            body.consent.text_version,
            body.consent.channel,
        )

    @app.get("/members/{member_id}", response_model=MemberOut, responses=ERRORS)
    def get_member(member_id: str) -> dict[str, Any]:
        return server.member(member_id)

    @app.delete("/members/{member_id}", response_model=EraseOut, responses=ERRORS)
    def erase_member(member_id: str) -> dict[str, Any]:
        """Erase here and at every till (retained tombstone); waits for the online tills' event/erased."""
        return server.erase(member_id)

    @app.post("/receipts", response_model=ReceiptOut, status_code=201, responses=ERRORS)
    def add_receipt(body: ReceiptIn) -> dict[str, Any]:
        """Bind a receipt to a visit or member and accrue points (store.points_per_unit per whole unit)."""
        items = [(i.sku, i.name, i.qty, cents(i.price)) for i in body.items]
        return server.add_receipt(
            items, cents(body.total), visit_id=body.visit_id, till=body.till, member_id=body.member_id
        )

    @app.get("/tills")
    def tills() -> dict[str, Any]:
        """Each till's retained status and last health report."""
        return {t: {"status": s.status, "health": s.health} for t, s in sorted(server.tills.items())}

    return app


def serve(config: StoreConfig) -> int:
    """Run the store server until Ctrl-C / SIGTERM: MQTT side plus the HTTP API (uvicorn)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    try:
        server = StoreServer(config)
    except (SQLAlchemyError, ImportError) as exc:
        print(f"store.database_url: cannot open {config.store.database_url}: {exc}", file=sys.stderr)
        return 1
    app = create_app(server, manage=True)
    # On SIGTERM uvicorn shuts the app down (stopping the MQTT side) and then re-raises the signal.
    uvicorn.run(app, host=config.http.host, port=config.http.port, log_level="info")
    return 0

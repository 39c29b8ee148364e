"""The store server's database (SQLAlchemy 2): members, consents, visits, receipts, points.

SQLite by default; any SQLAlchemy URL works the same way (PostgreSQL: `postgresql+psycopg://...`).
The schema is kept by Alembic (`tillface/store/migrations`): `open_database` upgrades the database to
the newest revision at start-up. A change to the models below needs a new revision, made with
`make_revision("what changed")` against a database at head (autogenerate, then review it).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    phone: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(80))
    points: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    enrolled_till: Mapped[str | None] = mapped_column(String(128))
    template_id: Mapped[str | None] = mapped_column(String(32))

    consents: Mapped[list[Consent]] = relationship(back_populates="member", cascade="all, delete-orphan")


class Consent(Base):
    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    text_version: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    given_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    till: Mapped[str] = mapped_column(String(128))
    visitor_code: Mapped[str] = mapped_column(String(16))

    member: Mapped[Member] = relationship(back_populates="consents")


class Visit(Base):
    __tablename__ = "visits"
    __table_args__ = (UniqueConstraint("till", "visit_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    till: Mapped[str] = mapped_column(String(128))
    visit_id: Mapped[str] = mapped_column(String(128), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))  # match | visitor
    member_id: Mapped[str | None] = mapped_column(String(128), index=True)
    visitor_code: Mapped[str | None] = mapped_column(String(16))
    enroll_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    left_after_s: Mapped[float | None] = mapped_column()


class Receipt(Base):
    __tablename__ = "receipts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    visit_pk: Mapped[int | None] = mapped_column(ForeignKey("visits.id"))
    member_id: Mapped[str | None] = mapped_column(String(128), index=True)  # None once erased
    total_cents: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    items: Mapped[list[ReceiptItem]] = relationship(back_populates="receipt", cascade="all, delete-orphan")


class ReceiptItem(Base):
    __tablename__ = "receipt_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    receipt_id: Mapped[int] = mapped_column(ForeignKey("receipts.id", ondelete="CASCADE"), index=True)
    sku: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int] = mapped_column(Integer)
    price_cents: Mapped[int] = mapped_column(Integer)  # per unit

    receipt: Mapped[Receipt] = relationship(back_populates="items")


class SeenEvent(Base):
    """Every event_id processed once: QoS 1 re-delivery and outbox resends are dropped here."""

    __tablename__ = "seen_events"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    till: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def open_database(url: str) -> sessionmaker[Session]:
    """An engine for `url` with the schema in place; returns the session factory."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_pragmas(engine)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to `revision` (Alembic; idempotent)."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)


def schema_drift(url: str) -> list[Any]:
    """What Alembic's autogenerate would still change in the database at `url` ([] = it matches)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def make_revision(url: str, message: str, rev_id: str | None = None) -> None:
    """Write a new migration for the difference between the models and the database at `url`."""
    from alembic import command

    engine = create_engine(url)
    with engine.begin() as connection:
        command.revision(_alembic_config(connection), message=message, autogenerate=True, rev_id=rev_id)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if ":memory:" not in str(engine.url):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()


def last_purchase(session: Session, member_id: str) -> str | None:
    """'2026-11-22: Espresso beans, Milk' for the member's newest receipt (≤ 80 characters)."""
    receipt = session.scalars(
        select(Receipt)
        .where(Receipt.member_id == member_id)
        .order_by(Receipt.created_at.desc(), Receipt.id.desc())
        .limit(1)
    ).first()
    if receipt is None or not receipt.items:
        return None
    text = f"{aware(receipt.created_at).date().isoformat()}: " + ", ".join(i.name for i in receipt.items)
    return text if len(text) <= 80 else text[:79] + "…"


def suggestions(session: Session, member_id: str, limit: int = 3) -> list[str]:
    """Up to `limit` item names to suggest to a member, by item co-occurrence over the store's receipts.

    Method: let B be the set of SKUs the member has bought. Every receipt of the store (anyone's) is a
    basket; for each basket that holds at least one SKU of B, every *other* SKU in it that the member
    has not bought scores one point per SKU of B it shares the basket with (a co-occurrence count,
    "people who bought your items also bought"). The highest scores win; ties go to the SKU found in
    more baskets overall, then to the SKU code, so the answer is deterministic. A member with no
    purchase yet gets the store's most frequent SKUs. Names are the newest name seen for each SKU.
    """
    rows = session.execute(select(ReceiptItem.receipt_id, ReceiptItem.sku, ReceiptItem.name)).all()
    baskets: dict[int, set[str]] = {}
    names: dict[str, str] = {}
    for receipt_id, sku, name in rows:
        baskets.setdefault(receipt_id, set()).add(sku)
        names[sku] = name
    bought = set(
        session.scalars(
            select(ReceiptItem.sku).join(Receipt).where(Receipt.member_id == member_id).distinct()
        )
    )
    popularity: Counter[str] = Counter(sku for basket in baskets.values() for sku in basket)
    score: Counter[str] = Counter()
    for basket in baskets.values():
        shared = len(basket & bought)
        if shared:
            for sku in basket - bought:
                score[sku] += shared
    if not bought:
        score = Counter({sku: 1 for sku in popularity})
    ranked = sorted(score, key=lambda sku: (-score[sku], -popularity[sku], sku))
    return [names[sku][:40] for sku in ranked[:limit]]

"""The store server's database (SQLAlchemy 2): members, consents, visits, receipts, points, the API keys
(hashed) and the append-only audit.

SQLite by default; any SQLAlchemy URL works the same way (PostgreSQL: `postgresql+psycopg://...`).
The schema is kept by Alembic (`tillface/store/migrations`): `open_database` upgrades the database to
the newest revision at start-up. A change to the models below needs a new revision, made with
`make_revision("what changed")` against a database at head (autogenerate, then review it).

Erasure leaves no personal data in SQLite's files: every connection runs `PRAGMA secure_delete=ON`
(deleted rows and freed pages are overwritten with zeros), and a commit that deleted a member is followed
by `PRAGMA wal_checkpoint(TRUNCATE)`, so that the old pages are gone from the -wal file too
(`scrub_after_erase`). PostgreSQL keeps dead rows until VACUUM: see README, "Store API access".
"""

from __future__ import annotations

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
    func,
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


class ItemStat(Base):
    """How many baskets (receipts) hold each SKU, and its newest name; kept up to date on every new
    receipt, so that suggestions never scan the receipts."""

    __tablename__ = "item_stats"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    baskets: Mapped[int] = mapped_column(Integer)


class ItemPair(Base):
    """How many baskets hold both `sku` and `other` (both orders are stored)."""

    __tablename__ = "item_pairs"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    other: Mapped[str] = mapped_column(String(64), primary_key=True)
    baskets: Mapped[int] = mapped_column(Integer)


class ApiKey(Base):
    """An API key of the store's HTTP API (`tillface.store.auth`): only the SHA-256 of the key is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the key's public id (in the key)
    name: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Append-only (the migration adds triggers that refuse UPDATE and DELETE): who did what, when.
    Never biometrics, never a phone number or a name (`tillface.store.audit`)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    key_id: Mapped[str | None] = mapped_column(String(16))
    key_name: Mapped[str] = mapped_column(String(80))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    member_id: Mapped[str | None] = mapped_column(String(128), index=True)
    points: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(String(200))


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
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "after_flush", _count_new_baskets)
    from . import audit

    event.listen(factory, "after_flush", audit.on_flush)
    if engine.dialect.name == "sqlite":
        event.listen(factory, "after_flush", _note_erasure)
        event.listen(factory, "after_commit", _scrub_if_erased)
    return factory


def _note_erasure(session: Session, _context: Any) -> None:
    if any(isinstance(obj, Member) for obj in session.deleted):
        session.info["erased"] = True


def _scrub_if_erased(session: Session) -> None:
    if session.info.pop("erased", False):
        bind = session.get_bind()
        scrub_after_erase(bind if isinstance(bind, Engine) else bind.engine)


def scrub_after_erase(engine: Engine, attempts: int = 20) -> bool:
    """SQLite: copy the WAL into the database file and truncate it to 0 bytes, so that the pages that
    held an erased member (zeroed in the database by secure_delete) leave the -wal file too. A reader
    mid-transaction makes the checkpoint busy; retried for about a second. True once done."""
    import logging
    import time

    for _ in range(attempts):
        with engine.connect() as connection:
            busy, _log, _done = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        if not busy:
            return True
        time.sleep(0.05)
    logging.getLogger("tillface.store").warning(
        "erase: the SQLite WAL checkpoint stayed busy; the erased rows leave the -wal file at the next one"
    )
    return False


def _count_new_baskets(session: Session, _context: Any) -> None:
    """Every receipt added through any session of this database updates the co-occurrence counts in the
    same transaction (so they can never disagree with the receipts)."""
    for receipt in [obj for obj in session.new if isinstance(obj, Receipt)]:
        count_basket(session, [(item.sku, item.name) for item in receipt.items])


def count_basket(session: Session, items: list[tuple[str, str]]) -> None:
    """Add one basket to item_stats and item_pairs with atomic upserts (safe under concurrent receipts)."""
    names = dict(items)  # the newest name of each SKU in this basket
    if not names:
        return
    stats = [{"sku": sku, "name": name, "baskets": 1} for sku, name in names.items()]
    pairs = [{"sku": a, "other": b, "baskets": 1} for a in names for b in names if a != b]
    connection = session.connection()
    upsert: Any
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    elif connection.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:
        raise NotImplementedError(f"item counts need an upsert; {connection.dialect.name} is not supported")
    stat_table, pair_table = ItemStat.__table__, ItemPair.__table__
    stmt = upsert(stat_table).values(stats)
    connection.execute(
        stmt.on_conflict_do_update(
            index_elements=["sku"],
            set_={"baskets": stat_table.c.baskets + 1, "name": stmt.excluded.name},
        )
    )
    if pairs:
        stmt = upsert(pair_table).values(pairs)
        connection.execute(
            stmt.on_conflict_do_update(
                index_elements=["sku", "other"], set_={"baskets": pair_table.c.baskets + 1}
            )
        )


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
        cursor.execute("PRAGMA secure_delete=ON")  # erased rows are overwritten, not just unlinked
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

    The counts live in item_pairs / item_stats (kept by `count_basket`), so the cost grows with the
    member's own items and their neighbours, not with the number of receipts.
    """
    bought = set(
        session.scalars(
            select(ReceiptItem.sku).join(Receipt).where(Receipt.member_id == member_id).distinct()
        )
    )
    if not bought:
        top = session.execute(
            select(ItemStat.name).order_by(ItemStat.baskets.desc(), ItemStat.sku).limit(limit)
        )
        return [name[:40] for (name,) in top]
    score = func.sum(ItemPair.baskets)
    ranked = session.execute(
        select(ItemStat.name)
        .select_from(ItemPair)
        .join(ItemStat, ItemStat.sku == ItemPair.other)
        .where(ItemPair.sku.in_(bought), ItemPair.other.not_in(bought))
        .group_by(ItemPair.other, ItemStat.name, ItemStat.baskets)
        .order_by(score.desc(), ItemStat.baskets.desc(), ItemPair.other)
        .limit(limit)
    )
    return [name[:40] for (name,) in ranked]

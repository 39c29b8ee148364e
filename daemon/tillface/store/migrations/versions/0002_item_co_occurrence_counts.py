"""item co-occurrence counts, so that suggestions never scan every receipt

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:30:00
"""

from __future__ import annotations

from itertools import permutations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    stats = op.create_table(
        "item_stats",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("baskets", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sku"),
    )
    pairs = op.create_table(
        "item_pairs",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("other", sa.String(length=64), nullable=False),
        sa.Column("baskets", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sku", "other"),
    )
    # Count the receipts already in the database (once; new receipts are counted as they arrive).
    rows = op.get_bind().execute(sa.text("SELECT receipt_id, sku, name FROM receipt_items ORDER BY id")).all()
    baskets: dict[int, dict[str, str]] = {}
    for receipt_id, sku, name in rows:
        baskets.setdefault(receipt_id, {})[sku] = name
    names: dict[str, str] = {}
    seen: dict[str, int] = {}
    together: dict[tuple[str, str], int] = {}
    for basket in baskets.values():
        for sku, name in basket.items():
            names[sku] = name
            seen[sku] = seen.get(sku, 0) + 1
        for pair in permutations(basket, 2):
            together[pair] = together.get(pair, 0) + 1
    if seen:
        op.bulk_insert(stats, [{"sku": k, "name": names[k], "baskets": n} for k, n in seen.items()])
    if together:
        op.bulk_insert(pairs, [{"sku": a, "other": b, "baskets": n} for (a, b), n in together.items()])


def downgrade() -> None:
    op.drop_table("item_pairs")
    op.drop_table("item_stats")

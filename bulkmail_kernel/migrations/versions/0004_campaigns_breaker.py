"""campaigns.breaker_after and campaigns.refusals_in_row: the circuit breaker.

A campaign pauses after ``breaker_after`` (default ``BULKMAIL_BREAKER_AFTER``, 10)
policy or system refusals in a row (a blocklisting, DMARC, a relay that refuses us),
before the whole list is refused; ``refusals_in_row`` is the count, kept in the
database so every worker and connection of the campaign adds to the same one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:40:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("breaker_after", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("refusals_in_row", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("refusals_in_row")
        batch.drop_column("breaker_after")

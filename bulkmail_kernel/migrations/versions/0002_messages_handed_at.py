"""messages.handed_at: when a claimed message was handed to the transport.

A worker marks a few claimed messages at a time before it sends them, so after a
crash only the marked ones are in doubt ('unknown'); the rest were never handed
over and go back to the queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 20:55:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("handed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("handed_at")

"""Frequency caps: the shared ``settings`` table and each campaign's own cap.

``settings`` holds what every notebook and worker on the database shares, first of all
the global frequency cap (``set_frequency_cap``: at most N marketing messages per
contact in D days). ``campaigns.frequency_cap`` is a campaign's own rule ("3/7" or
"none"; NULL: the global one) and ``campaigns.transactional`` marks a service message
(an appointment reminder) that is never capped and never counts toward a cap.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 16:30:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column(
            "value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_settings")),
    )
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("frequency_cap", sa.String(length=20), nullable=True))
        batch.add_column(
            sa.Column("transactional", sa.Boolean(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("transactional")
        batch.drop_column("frequency_cap")
    op.drop_table("settings")

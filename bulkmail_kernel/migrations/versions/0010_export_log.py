"""export_log: every export of contact data (and every refused attempt), for the audit.

``segments.audit`` writes one row per export of addresses, phone numbers or names —
segment exports to .xlsx/.csv and GDPR exports — with the database (PostgreSQL) or
OS (SQLite) user, the columns, the row count and the file. See docs/permissions.md.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:30:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("segment", sa.String(200), nullable=True),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_log")),
    )
    op.create_index(op.f("ix_export_log_exported_at"), "export_log", ["exported_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_export_log_exported_at"), table_name="export_log")
    op.drop_table("export_log")

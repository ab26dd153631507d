"""A/B tests and resends: campaigns.ab_test, campaigns.parent_id, ab_assignments.

``campaigns.ab_test`` holds a test's set-up and decision (JSON); ``ab_assignments``
records which arm (variant, holdout, rest) each recipient fell in, the holdout too,
which gets no message; ``campaigns.parent_id`` links a resend to non-clickers to the
campaign it follows up.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 19:20:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # parent_id has no foreign key: SQLite adds one only by copying the campaigns table
    # (a batch), and dropping the old copy would cascade to every message. bulkmail never
    # deletes a campaign, so the id stays good.
    op.add_column("campaigns", sa.Column("parent_id", sa.Integer(), nullable=True))
    op.add_column(
        "campaigns",
        sa.Column("ab_test", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True),
    )
    op.create_table(
        "ab_assignments",
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("contact_point_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("arm", sa.String(50), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_ab_assignments_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_point_id"],
            ["contact_points.id"],
            name=op.f("fk_ab_assignments_contact_point_id_contact_points"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_ab_assignments_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "contact_point_id", name=op.f("pk_ab_assignments")),
    )
    op.create_index(
        op.f("ix_ab_assignments_contact_id"), "ab_assignments", ["contact_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ab_assignments_contact_id"), table_name="ab_assignments")
    op.drop_table("ab_assignments")
    # In place, not a batch: a batch copies campaigns and drops the old table, and on
    # SQLite that drop cascades to every message (SQLite drops such columns itself).
    op.drop_column("campaigns", "ab_test")
    op.drop_column("campaigns", "parent_id")

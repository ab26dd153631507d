"""consents and message_links: recorded consent, and the links a click token may lead to.

``consents`` holds each consent given or withdrawn (marketing, tracking) with when, how
(import run, form, analyst, unsubscribe) and the words shown; the latest row per contact
and purpose is the current one. ``message_links`` holds the original links of a message
whose links were rewritten for click tracking: the click endpoint redirects only to them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 19:15:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("contact_point_id", sa.Integer(), nullable=True),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_consents_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_point_id"],
            ["contact_points.id"],
            name=op.f("fk_consents_contact_point_id_contact_points"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consents")),
    )
    op.create_index(
        "ix_consents_contact_purpose", "consents", ["contact_id", "purpose", "id"], unique=False
    )
    op.create_table(
        "message_links",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("link", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_links_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "link", name=op.f("pk_message_links")),
    )


def downgrade() -> None:
    op.drop_table("message_links")
    op.drop_index("ix_consents_contact_purpose", table_name="consents")
    op.drop_table("consents")

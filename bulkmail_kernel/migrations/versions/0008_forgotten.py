"""forgotten_addresses: erasure on request (GDPR art. 17) that stays erased.

``forget_contact`` deletes a person's data and keeps, per address, only an HMAC-SHA-256
under a salt made once per database (``settings`` row ``forgotten_salt``, the table of
0007), so a later
import of the address is refused without the address being stored.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 17:10:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forgotten_addresses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forgotten_addresses")),
        sa.UniqueConstraint(
            "channel", "address_hash", name=op.f("uq_forgotten_addresses_channel_address_hash")
        ),
    )


def downgrade() -> None:
    op.drop_table("forgotten_addresses")

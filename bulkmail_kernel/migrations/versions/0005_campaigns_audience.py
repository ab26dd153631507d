"""campaigns.audience: the filter its recipients were chosen by, recorded at registration.

``register()`` stores the ``FilterSpec`` (as JSON) that ``filter_recipients`` attached to
the recipients it was given, so ``explain(campaign, contact)`` can later say which rule
kept a person in or out. NULL: registered from a list that carried no filter.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 17:00:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(
            sa.Column("audience", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("audience")

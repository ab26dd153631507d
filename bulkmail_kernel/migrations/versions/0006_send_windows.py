"""campaigns.send_window, messages.timezone and messages.not_before: send windows.

A campaign may send only inside a window on each recipient's wall clock
(``outbox.windows``); each message keeps its recipient's IANA zone, decided at
registration (existing rows: NULL, the firm's zone ``BULKMAIL_TZ``), and, while its
window is closed, when it opens (``not_before``), which the claim respects.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 16:30:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("send_window", sa.String(200), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("timezone", sa.String(64), nullable=True))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("not_before")
        batch.drop_column("timezone")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("send_window")

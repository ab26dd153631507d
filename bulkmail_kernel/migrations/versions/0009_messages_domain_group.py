"""messages.domain_group: the recipient's mailbox provider, for the per-domain limits.

Registration stores it (``outbox.domains.domain_group``) so a claim can skip a
provider that is at its per-hour limit in SQL. The messages already in the outbox
get theirs here: only e-mails to a known provider's domain are read and written
(a LIKE per domain narrows them), the rest keep "" (no limit), as SMS do.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 16:40:00
"""

from alembic import op
import sqlalchemy as sa

from bulkmail_kernel.outbox.domains import GROUPS, domain_group

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("domain_group", sa.String(20), nullable=False, server_default="")
        )
        batch.create_index(
            "ix_messages_domain_claim", ["campaign_id", "domain_group", "status"], unique=False
        )
    messages = sa.table(
        "messages",
        sa.column("id", sa.Integer),
        sa.column("channel", sa.String),
        sa.column("recipient", sa.String),
        sa.column("domain_group", sa.String),
    )
    patterns = [f"%@{d}" for exact, _ in GROUPS.values() for d in exact]
    patterns += [f"%@{p}.%" for _, prefixes in GROUPS.values() for p in prefixes]
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(messages.c.id, messages.c.recipient).where(
            messages.c.channel == "email",
            sa.or_(*(sa.func.lower(messages.c.recipient).like(p) for p in patterns)),
        )
    ).all()
    by_group: dict[str, list[int]] = {}
    for r in rows:
        group = domain_group(r.recipient)
        if group:
            by_group.setdefault(group, []).append(r.id)
    for group, ids in by_group.items():
        for k in range(0, len(ids), 500):
            conn.execute(
                messages.update()
                .where(messages.c.id.in_(ids[k : k + 500]))
                .values(domain_group=group)
            )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_domain_claim")
        batch.drop_column("domain_group")

"""Helpers for the sending tests: a campaign whose outbox is filled directly in the database.

The engine tests need thousands of messages fast and must not depend on the
template renderer; registration itself is tested through the real renderer in
test_campaigns.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from bulkmail_kernel import add_sender_account, create_campaign, domain_group
from bulkmail_kernel.db import (
    Campaign,
    Contact,
    ContactPoint,
    Database,
    Message,
    MessageBody,
)


def address(i: int) -> str:
    return f"user{i:05d}@sk.example.net"


def body(i: int, campaign: str, to: str = "") -> bytes:
    return (
        f"From: Shop <news@shop.sk>\r\nTo: {to or address(i)}\r\nSubject: {campaign} #{i}\r\n"
        f"Message-ID: <{campaign}.{i}@shop.sk>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"Dobrý deň, zákazník {i}.\r\n.line that starts with a dot\r\n"
    ).encode()


def sink_account(
    db: Database, port: int, *, name: str = "sink", user: str = "", credential_ref: str = ""
) -> None:
    add_sender_account(
        name,
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Shop",
        settings={
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "user": user,
            "unsubscribe_url": "https://shop.sk/u?t={token}",
        },
        credential_ref=credential_ref,
        db=db,
        check=False,  # some tests point it at a sink that refuses or is not started yet
    )


def make_campaign(
    db: Database,
    n: int,
    *,
    name: str = "spring",
    sender: str = "sink",
    rate_per_hour: int = 3000,
    burst: int = 10,
    first: int = 0,
    status: str = "registered",
    breaker_after: int | None = None,
    address: Callable[[int], str] = address,
) -> int:
    """Create campaign ``name`` with ``n`` queued messages to user<first..>@sk.example.net.

    ``address`` gives recipient ``i`` another address (its domain group is stored as
    registration stores it).
    """
    info = create_campaign(
        name,
        sender=sender,
        rate_per_hour=rate_per_hour,
        burst=burst,
        breaker_after=breaker_after,
        db=db,
    )
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        existing = set(conn.execute(sa.select(ContactPoint.normalized)).scalars())
        new = [i for i in range(first, first + n) if address(i) not in existing]
        if new:
            conn.execute(
                sa.insert(Contact),
                [
                    {
                        "external_id": f"c{i}",
                        "first_name": f"Meno{i}",
                        "last_name": "Priezvisko",
                        "patronymic": "",
                        "language": "sk",
                        "registered_at": now,
                        "attributes": {},
                        "source": "test",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in new
                ],
            )
            ids = dict(conn.execute(sa.select(Contact.external_id, Contact.id)).all())
            conn.execute(
                sa.insert(ContactPoint),
                [
                    {
                        "contact_id": ids[f"c{i}"],
                        "channel": "email",
                        "value": address(i),
                        "normalized": address(i),
                        "type": "main",
                        "kind": "personal",
                        "mailing_allowed": True,
                        "is_preferred": True,
                        "soft_bounces": 0,
                        "source": "test",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in new
                ],
            )
        points = {
            r.normalized: (r.id, r.contact_id)
            for r in conn.execute(
                sa.select(ContactPoint.normalized, ContactPoint.id, ContactPoint.contact_id)
            )
        }
        rows = conn.execute(
            sa.insert(Message).returning(Message.id, Message.recipient),
            [
                {
                    "campaign_id": info.id,
                    "contact_id": points[address(i)][1],
                    "contact_point_id": points[address(i)][0],
                    "channel": "email",
                    "recipient": address(i),
                    "status": "queued",
                    "attempts": 0,
                    "message_id_header": f"<{name}.{i}@shop.sk>",
                    "last_error": "",
                    "domain_group": domain_group(address(i)),
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(first, first + n)
            ],
        ).all()
        by_addr = {r.recipient: r.id for r in rows}
        conn.execute(
            sa.insert(MessageBody),
            [
                {
                    "message_id": by_addr[address(i)],
                    "subject": f"{name} #{i}",
                    "body": body(i, name, address(i)),
                }
                for i in range(first, first + n)
            ],
        )
        conn.execute(sa.update(Campaign).where(Campaign.id == info.id).values(status=status))
    return info.id

"""Addresses erased on request (GDPR art. 17): their salted hashes, and the import's refusal.

``forget_contact`` (campaigns.privacy) keeps no address of the person it erases, only
``address_hash``: an HMAC-SHA-256 of "channel:identity" (``email_identity``, a phone in
E.164) under a salt made once per database and kept in ``settings``. Why a salt: there
are few enough plausible e-mail addresses and phone numbers that a plain SHA-256 of one
is reversed by hashing a dictionary of them (a leaked mailing list, every +421 mobile
number); with a random 32-byte secret per database, the hashes mean nothing without it,
and two databases' hashes cannot be matched against each other.

The importer asks ``drop_forgotten`` before it matches rows to stored contacts, so an
erased person is not brought back by the next export from the firm's CRM: the row is
rejected and the report says so.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bulkmail_kernel.contacts.report import _Report
from bulkmail_kernel.db import ForgottenAddress, Setting, chunks


class _PointLike(Protocol):
    channel: str
    normalized: str
    value: str
    column: str
    row: int


class _RowGroup(Protocol):
    """The importer's ``_Candidate`` (not imported: the importer imports this module)."""

    @property
    def row(self) -> int: ...
    @property
    def rows(self) -> Sequence[int]: ...
    @property
    def points(self) -> Sequence[_PointLike]: ...


_G = TypeVar("_G", bound=_RowGroup)

#: The ``settings`` row holding the salt (hex) of ``forgotten_addresses``.
SALT_SETTING = "forgotten_salt"


def database_salt(s: Session, *, create: bool = True) -> bytes | None:
    """Return this database's salt for address hashes, made on first use if ``create``."""
    row = s.get(Setting, SALT_SETTING)
    if row is None and create:
        try:
            with s.begin_nested():  # another process may make it at the same moment
                s.add(Setting(name=SALT_SETTING, value={"salt": secrets.token_hex(32)}))
        except IntegrityError:
            pass
        row = s.get(Setting, SALT_SETTING)
    return None if row is None else bytes.fromhex(row.value["salt"])


def address_hash(salt: bytes, channel: str, identity: str) -> str:
    """Return the salted hash under which an erased address is kept."""
    return hmac.new(salt, f"{channel}:{identity}".encode(), hashlib.sha256).hexdigest()


def remember_forgotten(s: Session, addresses: Iterable[tuple[str, str]], now: datetime) -> int:
    """Store the salted hash of each (channel, identity); return how many were new."""
    salt = database_salt(s)
    assert salt is not None  # created above
    wanted = {(ch, address_hash(salt, ch, ident)) for ch, ident in addresses}
    stmt = sa.select(ForgottenAddress.channel, ForgottenAddress.address_hash).where(
        ForgottenAddress.address_hash.in_([h for _, h in wanted])
    )
    known = {(ch, h) for ch, h in s.execute(stmt)}
    new = sorted(wanted - known)
    s.add_all(ForgottenAddress(channel=ch, address_hash=h, forgotten_at=now) for ch, h in new)
    return len(new)


def forgotten_on(
    s: Session, addresses: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], datetime]:
    """Return, for each (channel, identity) that was erased on request, when it was."""
    salt = database_salt(s, create=False)
    if salt is None:
        return {}  # nothing was ever forgotten here
    by_hash = {(ch, address_hash(salt, ch, ident)): (ch, ident) for ch, ident in addresses}
    found: dict[tuple[str, str], datetime] = {}
    for chunk in chunks(sorted({h for _, h in by_hash})):
        stmt = sa.select(
            ForgottenAddress.channel, ForgottenAddress.address_hash, ForgottenAddress.forgotten_at
        ).where(ForgottenAddress.address_hash.in_(chunk))
        for ch, h, when in s.execute(stmt):
            if (ch, h) in by_hash:
                found[by_hash[(ch, h)]] = when
    return found


def drop_forgotten(s: Session, groups: list[_G], report: _Report) -> list[_G]:
    """Reject the import rows holding an address erased on request; return the others."""
    erased = forgotten_on(s, {(p.channel, p.normalized) for g in groups for p in g.points})
    if not erased:
        return groups
    kept = []
    for g in groups:
        hits = [p for p in g.points if (p.channel, p.normalized) in erased]
        if not hits:
            kept.append(g)
            continue
        day = erased[(hits[0].channel, hits[0].normalized)].date().isoformat()
        why = f"this address was erased on request on {day}; not imported"
        report.add(hits[0].row, "rejected", hits[0].column, hits[0].value, why)
        for row in {g.row, *g.rows} - {hits[0].row}:
            report.add(row, "rejected", "", "", f"same person as row {hits[0].row}: {why}")
    return kept

"""One identity per e-mail address: recompute the keys, merge the duplicates, say what merged.

Before this revision ``normalized`` kept the case of the local part, so DUP.SAME@x.sk and
dup.same@x.sk were two contact points, often two contacts, and an unsubscribe of one
left the other mailed. Now every e-mail address is stored by its identity
(``contacts.values.email_identity``: local part case-folded, domain in A-labels). This
upgrade recomputes it for contact points, suppressions and messages, and merges what
became one:

- contacts holding one identity become one contact: the oldest (created first, then the
  lowest id) survives and takes every point, message and event of the others; its empty
  fields are filled from them, custom fields it lacks are added, and the others' rows
  as they were are kept in the ``merged`` events;
- contact points of one identity become the oldest point, which keeps its spelling and
  takes the messages, events, unsubscribe tokens and segment memberships of the others;
  mailing stays allowed only if every spelling allowed it (an opt-out under one spelling
  is the person's), soft bounces add up;
- suppressions of one identity become the oldest one, so a suppression of any spelling
  suppresses the address;
- messages go to the identity; two messages of one campaign to one identity stay as they
  are (history), and a second one still waiting to be sent is removed, so nobody gets
  the campaign twice.

Every merge is a ``merged`` event (on the surviving contact; its data holds the merged row
as it was, ``identity_merges()`` lists them) and a warning on the "bulkmail" logger, which
``bulkmail open-database`` prints.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:40:00
"""

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from bulkmail_kernel.contacts.values import email_identity
from bulkmail_kernel.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("bulkmail")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_T = UTCDateTime()

contacts = sa.table(
    "contacts",
    sa.column("id", sa.Integer), sa.column("external_id", sa.String),
    sa.column("first_name", sa.String), sa.column("last_name", sa.String),
    sa.column("patronymic", sa.String), sa.column("gender", sa.String),
    sa.column("language", sa.String), sa.column("registered_at", _T),
    sa.column("attributes", JSON), sa.column("source", sa.String),
    sa.column("created_at", _T), sa.column("updated_at", _T),
)  # fmt: skip
points = sa.table(
    "contact_points",
    sa.column("id", sa.Integer), sa.column("contact_id", sa.Integer),
    sa.column("channel", sa.String), sa.column("value", sa.String),
    sa.column("normalized", sa.String), sa.column("type", sa.String),
    sa.column("kind", sa.String), sa.column("mailing_allowed", sa.Boolean),
    sa.column("is_preferred", sa.Boolean), sa.column("soft_bounces", sa.Integer),
    sa.column("source", sa.String), sa.column("created_at", _T), sa.column("updated_at", _T),
)  # fmt: skip
suppressions = sa.table(
    "suppressions",
    sa.column("id", sa.Integer), sa.column("channel", sa.String),
    sa.column("normalized", sa.String), sa.column("reason", sa.String),
    sa.column("detail", sa.Text), sa.column("message_id", sa.Integer),
    sa.column("created_at", _T),
)  # fmt: skip
messages = sa.table(
    "messages",
    sa.column("id", sa.Integer), sa.column("campaign_id", sa.Integer),
    sa.column("contact_id", sa.Integer), sa.column("contact_point_id", sa.Integer),
    sa.column("channel", sa.String), sa.column("recipient", sa.String),
    sa.column("status", sa.String), sa.column("last_error", sa.Text),
    sa.column("updated_at", _T),
)  # fmt: skip
events = sa.table(
    "events",
    sa.column("id", sa.Integer), sa.column("occurred_at", _T), sa.column("kind", sa.String),
    sa.column("contact_id", sa.Integer), sa.column("contact_point_id", sa.Integer),
    sa.column("campaign_id", sa.Integer), sa.column("message_id", sa.Integer),
    sa.column("detail", sa.Text), sa.column("data", JSON),
)  # fmt: skip
tokens = sa.table(
    "unsubscribe_tokens",
    sa.column("token_hash", sa.String),
    sa.column("contact_point_id", sa.Integer),
)
members = sa.table(
    "segment_members",
    sa.column("segment_id", sa.Integer),
    sa.column("contact_point_id", sa.Integer),
)
_CONTACT_FIELDS = ("external_id", "first_name", "last_name", "patronymic", "gender", "language",
                   "registered_at", "attributes", "source", "created_at")  # fmt: skip
_WAITING = ("queued", "deferred")


def upgrade() -> None:
    _Merge(op.get_bind(), datetime.now(UTC)).run()


def downgrade() -> None:
    # Merged contacts cannot be split again; what they were stays in their "merged" events.
    pass


def identity_of(address: str) -> str:
    """Return the identity of a stored address, or the address itself if it is not valid."""
    # A lower-case ASCII address stored by an earlier import was validated then, and is
    # its own identity (case-folding and A-labels change nothing): skip re-validating it.
    if address.isascii() and address == address.lower() and " " not in address:
        return address
    try:
        return email_identity(address)
    except ValueError:
        log.warning("identity upgrade: %r is not a valid e-mail address, left as it is", address)
        return address


@dataclass
class _Point:
    id: int
    contact_id: int
    value: str
    normalized: str
    kind: str
    mailing_allowed: bool
    is_preferred: bool
    soft_bounces: int
    created_at: datetime | None


def _age(row: Any) -> tuple[datetime, int]:
    # The oldest first: created first, then the lowest id (ids grow with time).
    return (row.created_at or datetime.max.replace(tzinfo=UTC), row.id)


class _Merge:
    """The upgrade's work on one connection, inside the migration's transaction."""

    def __init__(self, conn: sa.Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.merged_contacts = 0
        self.merged_points = 0
        #: The merged contacts as they were, by id, for the merge records.
        self.snapshots: dict[int, dict[str, Any]] = {}

    def run(self) -> None:
        groups = self._point_groups()
        survivor = self._merge_contacts(groups)
        for key, group in groups.items():
            if len(group) > 1:
                self._merge_points(key, group, survivor)
            elif group[0].normalized != key:
                self._set(points, group[0].id, normalized=key)
        self._one_preferred(set(survivor.values()))
        n_supp = self._merge_suppressions()
        n_msg = self._rekey_messages()
        if self.merged_points or n_supp or n_msg:
            log.warning(
                "identity upgrade: %d contacts and %d contact points merged, %d suppressions "
                "merged, %d waiting duplicate messages removed (see identity_merges())",
                self.merged_contacts, self.merged_points, n_supp, n_msg,
            )  # fmt: skip

    # ----------------------------------------------------------------- contacts and points

    def _affected(self, table: Any) -> dict[str, list[int]]:
        """Return {identity: row ids} for the e-mail rows of ``table`` this upgrade changes.

        A row whose stored address is not its identity changes; so do the rows already
        stored as an identity another row turns into. The rest, nearly all of a list
        imported in lower case, is read once and left alone: memory grows with what
        changes, not with the list.
        """
        column, email = table.c.normalized, table.c.channel == "email"
        affected: dict[str, list[int]] = defaultdict(list)
        rows = self.conn.execute(
            sa.select(table.c.id, column).where(email).execution_options(yield_per=5000)
        )
        for row_id, stored in rows:
            key = identity_of(stored)
            if key != stored:
                affected[key].append(row_id)
        for chunk in _chunks(sorted(affected)):
            query = sa.select(table.c.id, column).where(email, column.in_(chunk))
            for row_id, stored in self.conn.execute(query):
                affected[stored].append(row_id)
        return affected

    def _point_groups(self) -> dict[str, list[_Point]]:
        affected = self._affected(points)
        by_id: dict[int, _Point] = {}
        for chunk in _chunks(sorted(i for ids in affected.values() for i in ids)):
            rows = self.conn.execute(
                sa.select(
                    points.c.id, points.c.contact_id, points.c.value, points.c.normalized,
                    points.c.kind, points.c.mailing_allowed, points.c.is_preferred,
                    points.c.soft_bounces, points.c.created_at,
                ).where(points.c.id.in_(chunk))
            )  # fmt: skip
            by_id.update((r.id, _Point(*r)) for r in rows)
        return {key: [by_id[i] for i in sorted(ids)] for key, ids in sorted(affected.items())}

    def _merge_contacts(self, groups: dict[str, list[_Point]]) -> dict[int, int]:
        """Make the contacts sharing an identity one; return {contact id: surviving id}."""
        parent: dict[int, int] = {}

        def find(c: int) -> int:
            while parent.setdefault(c, c) != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        shared: dict[int, list[str]] = defaultdict(list)  # contact -> identities it shares
        for key, group in groups.items():
            for p in group if len(group) > 1 else ():
                shared[p.contact_id].append(key)
        ids = sorted(shared)
        rows = {
            r.id: r
            for chunk in _chunks(ids)
            for r in self.conn.execute(
                sa.select(contacts.c.id, *[contacts.c[f] for f in _CONTACT_FIELDS]).where(
                    contacts.c.id.in_(chunk)
                )
            )
        }
        # Two external ids are two records of the source system (a family sharing a
        # mailbox): those contacts stay apart, and the address goes to the contact of
        # its oldest point.
        external: dict[int, str | None] = {cid: rows[cid].external_id for cid in ids}
        for key in sorted(groups):
            group = groups[key]
            for p in group[1:] if len(group) > 1 else ():
                a, b = find(group[0].contact_id), find(p.contact_id)
                if a == b:
                    continue
                if external[a] and external[b] and external[a] != external[b]:
                    log.warning(
                        "identity upgrade: contacts %d (external id %s) and %d (external id %s) "
                        "share %s but stay apart: different external ids",
                        group[0].contact_id, external[a], p.contact_id, external[b], key,
                    )  # fmt: skip
                    continue
                parent[b] = a
                external[a] = external[a] or external[b]
        components: dict[int, list[Any]] = defaultdict(list)
        for cid in ids:
            components[find(cid)].append(rows[cid])
        survivor: dict[int, int] = {}
        for component in components.values():
            component.sort(key=_age)
            keep = component[0]
            for c in component:
                survivor[c.id] = keep.id
            if len(component) > 1:
                self._fold_contacts(keep, component[1:], shared)
        return survivor

    def _fold_contacts(self, keep: Any, others: list[Any], shared: dict[int, list[str]]) -> None:
        """Move every point, message and event of ``others`` to ``keep``, fill its gaps, delete them."""
        values: dict[str, Any] = {}
        attributes = dict(keep.attributes or {})
        for c in others:
            for name in ("first_name", "last_name", "patronymic", "source", "gender"):
                if not (values.get(name) or getattr(keep, name)) and getattr(c, name):
                    values[name] = getattr(c, name)
            for k, v in (c.attributes or {}).items():
                attributes.setdefault(k, v)  # the survivor's own value wins; data keeps the other
        earliest = min((c.registered_at for c in [keep, *others] if c.registered_at), default=None)
        if earliest is not None and earliest != keep.registered_at:
            values["registered_at"] = earliest
        external = keep.external_id or next((c.external_id for c in others if c.external_id), None)
        for c in others:
            for table in (points, messages, events):
                self.conn.execute(
                    sa.update(table).where(table.c.contact_id == c.id).values(contact_id=keep.id)
                )
            self.conn.execute(sa.delete(contacts).where(contacts.c.id == c.id))
            self.merged_contacts += 1
            self.snapshots[c.id] = _snapshot(c)
            same = ", ".join(sorted(set(shared[c.id])))
            detail = f"contact {c.id} merged into contact {keep.id}: same address {same}"
            self._record("contact", same, keep.id, c.id, keep.id, c.id, "", "", detail,
                         self.snapshots[c.id])  # fmt: skip
        if external != keep.external_id:
            values["external_id"] = external  # its owner is deleted by now: no unique clash
        if attributes != (keep.attributes or {}):
            values["attributes"] = attributes
        if values:
            self._set(contacts, keep.id, updated_at=self.now, **values)

    def _merge_points(self, key: str, group: list[_Point], survivor: dict[int, int]) -> None:
        """Make the points of one identity the oldest one; move what referred to the others."""
        group.sort(key=_age)
        keep, others = group[0], group[1:]
        kept_segments = set(
            self.conn.execute(
                sa.select(members.c.segment_id).where(members.c.contact_point_id == keep.id)
            ).scalars()
        )
        contact_id = survivor.get(keep.contact_id, keep.contact_id)
        for p in others:
            moved = survivor.get(p.contact_id, p.contact_id) != contact_id  # kept apart
            for table in (messages, events, tokens):
                self.conn.execute(
                    sa.update(table)
                    .where(table.c.contact_point_id == p.id)
                    .values(contact_point_id=keep.id)
                )
            # segment_members' key is (segment, point): move only where keep is not a member.
            segments = set(
                self.conn.execute(
                    sa.select(members.c.segment_id).where(members.c.contact_point_id == p.id)
                ).scalars()
            )
            self.conn.execute(sa.delete(members).where(members.c.contact_point_id == p.id))
            for segment in sorted(segments - kept_segments):
                self.conn.execute(
                    sa.insert(members).values(segment_id=segment, contact_point_id=keep.id)
                )
            kept_segments |= segments
            self.conn.execute(sa.delete(points).where(points.c.id == p.id))
            self.merged_points += 1
            detail = (f"{p.value} (point {p.id}, contact {p.contact_id}) is the same address as "
                      f"{keep.value} (point {keep.id}): merged into contact {contact_id}")  # fmt: skip
            if moved:
                detail += f"; contact {p.contact_id} stays apart (another external id)"
            merged_point = {
                "value": p.value, "normalized": p.normalized, "kind": p.kind,
                "mailing_allowed": p.mailing_allowed, "is_preferred": p.is_preferred,
                "soft_bounces": p.soft_bounces, "segments": sorted(segments),
                "created_at": _iso(p.created_at),
            }  # fmt: skip
            self._record("contact_point", key, keep.id, p.id, contact_id, p.contact_id,
                         keep.value, p.value, detail, merged_point, point_id=keep.id)  # fmt: skip
        self._set(
            points, keep.id,
            normalized=key,
            # Mailing someone who said no under one spelling is worse than missing a yes.
            mailing_allowed=all(p.mailing_allowed for p in group),
            is_preferred=any(p.is_preferred for p in group),
            soft_bounces=sum(p.soft_bounces or 0 for p in group),
            updated_at=self.now,
        )  # fmt: skip

    def _one_preferred(self, contact_ids: set[int]) -> None:
        """Keep one preferred point per channel and kind on each contact that took others."""
        for chunk in _chunks(sorted(contact_ids)):
            rows = self.conn.execute(
                sa.select(points.c.id, points.c.contact_id, points.c.channel, points.c.kind)
                .where(points.c.contact_id.in_(chunk), points.c.is_preferred.is_(True))
                .order_by(points.c.id)
            ).all()
            seen: set[tuple[int, str, str]] = set()
            for pid, cid, channel, kind in rows:
                if (cid, channel, kind) in seen:
                    self._set(points, pid, is_preferred=False)
                seen.add((cid, channel, kind))

    # ----------------------------------------------------------------- suppressions, messages

    def _merge_suppressions(self) -> int:
        """Make the suppressions of one identity the oldest one, stored by the identity."""
        affected = self._affected(suppressions)
        by_id: dict[int, Any] = {}
        for chunk in _chunks(sorted(i for ids in affected.values() for i in ids)):
            query = sa.select(suppressions).where(suppressions.c.id.in_(chunk))
            by_id.update((r.id, r) for r in self.conn.execute(query))
        groups = {key: [by_id[i] for i in sorted(ids)] for key, ids in sorted(affected.items())}
        merged = 0
        for key, group in groups.items():
            group.sort(key=_age)
            keep = group[0]
            for r in group[1:]:
                self.conn.execute(sa.delete(suppressions).where(suppressions.c.id == r.id))
                merged += 1
                detail = (f"suppression of {r.normalized} ({r.reason}) is the same address as "
                          f"{keep.normalized} ({keep.reason}): one suppression of {key}")  # fmt: skip
                merged_row = {
                    "normalized": r.normalized, "reason": r.reason, "detail": r.detail,
                    "message_id": r.message_id, "created_at": _iso(r.created_at),
                }  # fmt: skip
                self._record("suppression", key, keep.id, r.id, None, None,
                             keep.normalized, r.normalized, detail, merged_row)  # fmt: skip
            if keep.normalized != key:
                self._set(suppressions, keep.id, normalized=key)
        return merged

    def _rekey_messages(self) -> int:
        """Address messages to the identity; remove a waiting second one to the same person."""
        # Most recipients are their own identity already: collect only those that are not.
        changed: dict[tuple[int, str], list[Any]] = defaultdict(list)
        rows = self.conn.execute(
            sa.select(
                messages.c.id, messages.c.campaign_id, messages.c.recipient, messages.c.status
            )
            .where(messages.c.channel == "email")
            .order_by(messages.c.id)
            .execution_options(yield_per=5000)
        )
        for r in rows:
            key = identity_of(r.recipient)
            if key != r.recipient:
                changed[(r.campaign_id, key)].append(r)
        # A message already addressed to the identity in the same campaign is the one kept.
        holders: dict[tuple[int, str], Any] = {}
        keys = sorted({key for _, key in changed})
        for chunk in _chunks(keys):
            for r in self.conn.execute(
                sa.select(
                    messages.c.id, messages.c.campaign_id, messages.c.recipient, messages.c.status
                ).where(messages.c.channel == "email", messages.c.recipient.in_(chunk))
            ):
                if (r.campaign_id, r.recipient) in changed:
                    holders[(r.campaign_id, r.recipient)] = r
        removed = 0
        for (campaign_id, key), group in changed.items():
            keep = holders.get((campaign_id, key))
            if keep is None:
                keep = group[0]
                self._set(messages, keep.id, recipient=key)
            for r in group:
                if r is keep or r.status not in _WAITING:
                    continue  # sent, failed, ...: history stays as it was
                why = (f"same address as message {keep.id} ({key}): one identity per address "
                       f"since upgrade {revision}")  # fmt: skip
                self._set(messages, r.id, status="removed", last_error=why, updated_at=self.now)
                self.conn.execute(
                    sa.insert(events).values(
                        occurred_at=self.now, kind="skipped", campaign_id=campaign_id,
                        message_id=r.id, detail=why, data={"at": f"upgrade {revision}"},
                    )
                )  # fmt: skip
                log.warning(
                    "identity upgrade: message %d to %s removed: %s", r.id, r.recipient, why
                )
                removed += 1
        return removed

    # ----------------------------------------------------------------- helpers

    def _set(self, table: Any, row_id: int, **values: Any) -> None:
        self.conn.execute(sa.update(table).where(table.c.id == row_id).values(**values))

    def _record(self, merge: str, key: str, kept: int, merged: int, kept_contact: int | None,
                merged_contact: int | None, kept_value: str, merged_value: str, detail: str,
                merged_row: dict[str, Any], point_id: int | None = None) -> None:  # fmt: skip
        """Say what merged: a warning, and a ``merged`` event ``identity_merges()`` reads."""
        log.warning("identity upgrade: %s", detail)
        data = {
            "merge": merge, "identity": key, "kept_id": kept, "merged_id": merged,
            "kept_contact_id": kept_contact, "merged_contact_id": merged_contact,
            "kept_value": kept_value, "merged_value": merged_value, "merged_row": merged_row,
            "upgrade": revision,
        }  # fmt: skip
        self.conn.execute(
            sa.insert(events).values(
                occurred_at=self.now, kind="merged", contact_id=kept_contact,
                contact_point_id=point_id, detail=detail, data=data,
            )
        )  # fmt: skip


def _snapshot(c: Any) -> dict[str, Any]:
    return {f: _iso(getattr(c, f)) for f in ("id", *_CONTACT_FIELDS)}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

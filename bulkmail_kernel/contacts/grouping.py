"""De-duplication of an import: rows folded into one another, then matched to stored contacts.

Rows sharing an external id, e-mail identity or phone are one contact
(``_merge_within_source``); each resulting group is then matched to the contact the
database already holds under any of them, and a group naming two different stored
contacts is rejected (``_resolve_against_db``). Every merge, match and conflict goes
into the row report.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from bulkmail_kernel.contacts.checks import _Candidate, _label, _Point
from bulkmail_kernel.contacts.report import _Report
from bulkmail_kernel.db import Contact, ContactPoint, chunks


def _merge_within_source(candidates: list[_Candidate], report: _Report) -> list[_Candidate]:
    """Fold rows that share an external id, e-mail or phone into the first such row."""
    groups: list[_Candidate] = []
    by_ext: dict[str, _Candidate] = {}
    by_point: dict[tuple[str, str], _Candidate] = {}
    for cand in candidates:
        hits: list[tuple[_Candidate, str]] = []
        if cand.external_id is not None and cand.external_id in by_ext:
            hits.append((by_ext[cand.external_id], f"same external id {cand.external_id}"))
        for p in cand.points:
            if (g := by_point.get((p.channel, p.normalized))) is not None:
                hits.append((g, f"same {_label(p.channel)} {p.normalized}"))
        targets = list({id(g): g for g, _ in hits}.values())
        if len(targets) > 1:
            (g1, why1), (g2, why2) = hits[0], next(h for h in hits if h[0] is not hits[0][0])
            report.add(cand.row, "rejected", "", "",
                       f"conflict: {why1.removeprefix('same ')} is in row {g1.row} but "
                       f"{why2.removeprefix('same ')} is in row {g2.row}")  # fmt: skip
            continue
        if targets:
            g, why = hits[0]
            if cand.external_id and g.external_id and cand.external_id != g.external_id:
                report.add(cand.row, "rejected", "", cand.external_id,
                           f"conflict: {why.removeprefix('same ')} is already in row {g.row} "
                           f"with external id {g.external_id}")  # fmt: skip
                continue
            spellings = _other_spellings(g.points, cand.points)
            g.absorb(cand)
            for p, mine in spellings:
                same = (f"{p.value} is the same address as {mine.value} (row {mine.row}): "
                        "merged into one contact")  # fmt: skip
                report.add(cand.row, "merged", p.column, p.value, same)
            if not spellings:
                report.add(cand.row, "merged", "", "", f"merged into row {g.row}: {why}")
        else:
            g = cand
            groups.append(g)
        if g.external_id is not None:
            by_ext.setdefault(g.external_id, g)
        for p in g.points:
            by_point.setdefault((p.channel, p.normalized), g)
    return groups


def _other_spellings(have: list[_Point], new: list[_Point]) -> list[tuple[_Point, _Point]]:
    """Return (new point, point held) pairs of one e-mail identity spelled differently."""
    held = {p.normalized: p for p in have if p.channel == "email"}
    pairs = [(p, held[p.normalized]) for p in new if p.channel == "email" and p.normalized in held]
    return [(p, mine) for p, mine in pairs if mine.value != p.value]


def _resolve_against_db(
    s: Session, groups: list[_Candidate], report: _Report
) -> dict[int, Contact]:
    """Attach each group to the existing contact it matches; reject conflicting ones."""
    ext_ids = sorted({g.external_id for g in groups if g.external_id is not None})
    by_ext: dict[str, int] = {}
    for chunk in chunks(ext_ids):
        ext_stmt = sa.select(Contact.external_id, Contact.id).where(Contact.external_id.in_(chunk))
        by_ext.update({e: i for e, i in s.execute(ext_stmt) if e is not None})
    owner: dict[tuple[str, str], int] = {}
    stored: dict[tuple[str, str], str] = {}  # the spelling kept for each identity
    for channel in ("email", "phone"):
        norms = sorted({p.normalized for g in groups for p in g.points if p.channel == channel})
        for chunk in chunks(norms):
            # channel first, so the (channel, normalized) unique index serves the lookup.
            point_stmt = sa.select(
                ContactPoint.normalized, ContactPoint.contact_id, ContactPoint.value
            ).where(ContactPoint.channel == channel, ContactPoint.normalized.in_(chunk))
            for nm, owner_id, value in s.execute(point_stmt):
                owner[(channel, nm)] = owner_id
                stored[(channel, nm)] = value
    matched_ids = sorted(set(by_ext.values()) | set(owner.values()))
    contacts: dict[int, Contact] = {}
    for ids_chunk in chunks(matched_ids):
        load = (
            sa.select(Contact)
            .where(Contact.id.in_(ids_chunk))
            .options(selectinload(Contact.points))
        )
        contacts.update({c.id: c for c in s.scalars(load)})

    claimed: dict[int, _Candidate] = {}
    for g in groups:
        hits: list[tuple[int, str]] = []
        if g.external_id is not None and g.external_id in by_ext:
            hits.append((by_ext[g.external_id], f"external id {g.external_id}"))
        for p in g.points:
            if (cid := owner.get((p.channel, p.normalized))) is not None:
                hits.append((cid, f"{_label(p.channel)} {p.normalized}"))
        ids = list(dict.fromkeys(cid for cid, _ in hits))
        reason = None
        if len(ids) > 1:
            (c1, w1), (c2, w2) = hits[0], next(h for h in hits if h[0] != hits[0][0])
            reason = (f"conflict: {w1} is contact {c1} in the database but {w2} is contact {c2}; "
                      "merge those contacts first or fix the row")  # fmt: skip
        elif ids:
            existing = contacts[ids[0]]
            if g.external_id and existing.external_id and existing.external_id != g.external_id:
                reason = (f"conflict: {hits[0][1]} belongs to contact {existing.id} with external "
                          f"id {existing.external_id} in the database")  # fmt: skip
        if reason is not None:
            report.add(g.row, "rejected", "", "", reason)
            for merged_row in g.rows:
                report.add(
                    merged_row, "rejected", "", "", f"merged into row {g.row}, which was rejected"
                )
            g.contact_id = -1
            continue
        if ids:
            g.contact_id = ids[0]
            for p in g.points:
                spelled = stored.get((p.channel, p.normalized))
                if p.channel == "email" and spelled is not None and spelled != p.value:
                    why = (f"{p.value} is the same address as {spelled} of contact {ids[0]} in "
                           "the database: merged into that contact")  # fmt: skip
                    report.add(p.row, "matched", p.column, p.value, why)
            if (first := claimed.get(ids[0])) is not None:
                first.absorb(g)
                first.rows = (*first.rows, *g.rows)
                why = f"merged into row {first.row}: both are contact {ids[0]} in the database"
                report.add(g.row, "merged", "", "", why)
                g.contact_id = -2
            else:
                claimed[ids[0]] = g
    return contacts

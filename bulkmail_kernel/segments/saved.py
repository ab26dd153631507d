"""Saved segments: named mailing groups stored with their spec and a snapshot of members.

A saved segment lives in the ``segments``/``segment_members`` tables: the
``FilterSpec`` as JSON plus the contact point ids it matched when saved, so a group
can be mailed again exactly as it was (``mode="snapshot"``) or re-evaluated on
today's data (``mode="reevaluate"``). ``save_segment``, ``list_segments``,
``load_segment``, ``rename_segment`` and ``delete_segment`` manage them;
``segment_recipients`` turns one back into rows of the recipient frame.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.db import (
    Database,
    Segment,
    SegmentMember,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import SegmentError
from bulkmail_kernel.segments.filters import _require, filter_recipients
from bulkmail_kernel.segments.spec import FilterSpec, _did_you_mean

log = logging.getLogger("bulkmail")


@dataclass(frozen=True)
class SegmentInfo:
    """A saved segment as stored: its spec and the size and time of its snapshot."""

    id: int
    name: str
    description: str
    spec: FilterSpec
    members: int
    snapshot_at: datetime | None
    created_at: datetime
    updated_at: datetime


class LoadedSegment(NamedTuple):
    """What ``load_segment`` returns: ``spec, info, member_ids = load_segment(name)``."""

    spec: FilterSpec
    info: SegmentInfo
    member_ids: pd.Index


def _check_name(name: Any, what: str = "segment name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise SegmentError(f"{what}: give a non-empty text, got {name!r}", segment=name)
    name = name.strip()
    if len(name) > 200:
        raise SegmentError(f"{what}: {name[:40]!r}... is longer than 200 characters")
    return name


def _get(session: sa.orm.Session, name: str) -> Segment:
    seg = session.scalars(sa.select(Segment).where(Segment.name == name)).one_or_none()
    if seg is None:
        known = session.scalars(sa.select(Segment.name).order_by(Segment.name)).all()
        raise SegmentError(
            f"segment {name!r} does not exist{_did_you_mean(name, known)}; "
            f"saved segments: {', '.join(known) or '(none)'}; see list_segments()",
            segment=name,
        )
    return seg


def _info(session: sa.orm.Session, seg: Segment) -> SegmentInfo:
    count = session.scalar(
        sa.select(sa.func.count())
        .select_from(SegmentMember)
        .where(SegmentMember.segment_id == seg.id)
    )
    return SegmentInfo(
        id=seg.id,
        name=seg.name,
        description=seg.description,
        spec=FilterSpec.from_dict(seg.spec),
        members=int(count or 0),
        snapshot_at=seg.snapshot_at,
        created_at=seg.created_at,
        updated_at=seg.updated_at,
    )


_CHUNK = 50_000


def _insert_members(session: sa.orm.Session, segment_id: int, ids: np.ndarray) -> None:
    """Store the snapshot in bulk: COPY on PostgreSQL, chunked executemany elsewhere."""
    conn = session.connection()
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        import psycopg

        raw = conn.connection.driver_connection
        try:
            with raw.cursor() as cur:  # type: ignore[union-attr]
                copy_sql = "COPY segment_members (segment_id, contact_point_id) FROM STDIN"
                with cur.copy(copy_sql) as copy:
                    for start in range(0, len(ids), _CHUNK):
                        chunk = ids[start : start + _CHUNK].tolist()
                        copy.write("".join(f"{segment_id}\t{p}\n" for p in chunk))
        except psycopg.errors.IntegrityError as exc:
            # Raw COPY bypasses SQLAlchemy's wrapping; wrap it the same way for the caller.
            raise sa.exc.IntegrityError("COPY segment_members", None, exc) from exc
        return
    # DeclarativeBase types __table__ as FromClause; a declarative model's is a Table.
    table = cast(sa.Table, SegmentMember.__table__)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK].tolist()
        conn.execute(
            sa.insert(table), [{"segment_id": segment_id, "contact_point_id": p} for p in chunk]
        )


def save_segment(
    name: str,
    spec: FilterSpec,
    frame: pd.DataFrame,
    *,
    db: Database | None = None,
    url: str | None = None,
    description: str = "",
    today: date | datetime | str | None = None,
    replace: bool = False,
) -> SegmentInfo:
    """Save ``spec`` as segment ``name`` with a snapshot of the contact points it selects now.

    Raises:
        SegmentError: the name is taken (pass ``replace=True`` to overwrite) or the
            frame holds contact points that are not in this database.

    """
    name = _check_name(name)
    members = filter_recipients(frame, spec, today=today)
    ids = np.unique(members["contact_point_id"].to_numpy(dtype=np.int64))
    database = resolve_database(db, url)
    try:
        with database.session() as s:
            seg = s.scalars(sa.select(Segment).where(Segment.name == name)).one_or_none()
            if seg is not None and not replace:
                raise SegmentError(
                    f"segment {name!r} already exists: choose another name, pass replace=True "
                    "to overwrite it, or rename_segment()/delete_segment() it first",
                    segment=name,
                    exists=True,
                )
            now = utcnow()
            if seg is None:
                seg = Segment(name=name, created_at=now)
                s.add(seg)
            else:
                s.execute(sa.delete(SegmentMember).where(SegmentMember.segment_id == seg.id))
            seg.description = description
            seg.spec = spec.to_dict()
            seg.snapshot_at = now
            seg.updated_at = now
            s.flush()
            _insert_members(s, seg.id, ids)
            info = _info(s, seg)
    except sa.exc.IntegrityError as exc:
        raise SegmentError(
            f"segment {name!r}: cannot store its {len(ids)} members in {database.url}: "
            f"{exc.orig}; was the frame read from this database (contacts_frame(db))? "
            "If the name was taken meanwhile, choose another",
            segment=name,
        ) from exc
    log.info("saved segment %r with %d members", name, info.members)
    return info


def list_segments(*, db: Database | None = None, url: str | None = None) -> pd.DataFrame:
    """Return the saved segments: name, description, members, snapshot and change times, spec."""
    database = resolve_database(db, url)
    counts = (
        sa.select(SegmentMember.segment_id, sa.func.count().label("members"))
        .group_by(SegmentMember.segment_id)
        .subquery()
    )
    query = (
        sa.select(Segment, sa.func.coalesce(counts.c.members, 0))
        .outerjoin(counts, counts.c.segment_id == Segment.id)
        .order_by(Segment.name)
    )
    with database.session() as s:
        rows = [
            {
                "id": seg.id,
                "name": seg.name,
                "description": seg.description,
                "members": int(n),
                "snapshot_at": seg.snapshot_at,
                "created_at": seg.created_at,
                "updated_at": seg.updated_at,
                "spec": json.dumps(seg.spec, ensure_ascii=False, sort_keys=True),
            }
            for seg, n in s.execute(query)
        ]
    out = pd.DataFrame(
        rows,
        columns=[
            "id",
            "name",
            "description",
            "members",
            "snapshot_at",
            "created_at",
            "updated_at",
            "spec",
        ],
    )
    for col in ("snapshot_at", "created_at", "updated_at"):
        # What a person reads: the analyst's zone, to the second (display.readable).
        out[col] = pd.to_datetime(out[col], utc=True).dt.tz_convert(config.local_timezone())
    return readable(out.astype({"id": "int64", "members": "int64"}))


def load_segment(name: str, *, db: Database | None = None, url: str | None = None) -> LoadedSegment:
    """Return the spec, the stored info and the snapshot's contact point ids of segment ``name``."""
    database = resolve_database(db, url)
    with database.session() as s:
        seg = _get(s, _check_name(name))
        ids = s.scalars(
            sa.select(SegmentMember.contact_point_id)
            .where(SegmentMember.segment_id == seg.id)
            .order_by(SegmentMember.contact_point_id)
        ).all()
        info = _info(s, seg)
    member_ids = pd.Index(np.asarray(ids, dtype=np.int64), name="contact_point_id")
    return LoadedSegment(info.spec, info, member_ids)


def segment_recipients(
    name: str,
    frame: pd.DataFrame,
    *,
    mode: Literal["snapshot", "reevaluate"] = "snapshot",
    today: date | datetime | str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the recipients of segment ``name``: its frozen members or its spec on ``frame``.

    ``mode="snapshot"`` returns the rows of ``frame`` whose contact point was a member
    when the segment was saved (members deleted since are missing, and logged);
    ``mode="reevaluate"`` applies the saved spec to ``frame`` as of ``today``.
    The result's ``attrs["segment"]`` names the segment (the export log records it).
    """
    if mode not in ("snapshot", "reevaluate"):
        raise SegmentError(f"mode: expected 'snapshot' or 'reevaluate', got {mode!r}", segment=name)
    spec, info, member_ids = load_segment(name, db=db, url=url)
    if mode == "reevaluate":
        chosen = filter_recipients(frame, spec, today=today)
        chosen.attrs["segment"] = name
        return chosen
    points = _require(frame, "contact_point_id", "segment_recipients")
    mask = points.isin(member_ids).to_numpy()
    missing = len(member_ids) - int(mask.sum())
    if missing > 0:
        log.warning(
            "segment %r: %d of its %d members are not in the frame (deleted since %s?)",
            name,
            missing,
            len(member_ids),
            info.snapshot_at,
        )
    chosen = frame.take(np.flatnonzero(mask))
    chosen.attrs["segment"] = name
    return chosen


def rename_segment(
    name: str, new_name: str, *, db: Database | None = None, url: str | None = None
) -> SegmentInfo:
    """Rename segment ``name`` to ``new_name``."""
    name, new_name = _check_name(name), _check_name(new_name, "new segment name")
    database = resolve_database(db, url)
    with database.session() as s:
        seg = _get(s, name)
        if new_name != name:
            taken = s.scalar(sa.select(Segment.id).where(Segment.name == new_name))
            if taken is not None:
                raise SegmentError(
                    f"cannot rename segment {name!r}: {new_name!r} already exists; "
                    "choose another name or delete_segment() that one first",
                    segment=new_name,
                )
            seg.name = new_name
            seg.updated_at = utcnow()
            s.flush()
        return _info(s, seg)


def delete_segment(name: str, *, db: Database | None = None, url: str | None = None) -> None:
    """Delete segment ``name`` and its snapshot (the contacts themselves stay)."""
    database = resolve_database(db, url)
    with database.session() as s:
        seg = _get(s, _check_name(name))
        # Explicit, so it does not depend on SQLite's foreign_keys pragma being on.
        s.execute(sa.delete(SegmentMember).where(SegmentMember.segment_id == seg.id))
        s.delete(seg)
    log.info("deleted segment %r", name)

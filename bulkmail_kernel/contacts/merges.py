"""Identity merges: what became one when two spellings turned out to be one address.

An e-mail address is matched by its identity (``values.email_identity``: case-blind,
IDN domain in one form). The upgrade that introduced it (migration 0003) merged the
contacts, contact points and suppressions that shared an identity and recorded each
merge as a ``merged`` event whose data holds the merged row as it was; the import
reports its own merges row by row. ``identity_merges`` lists the recorded ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.db import Database, Event, resolve_database
from bulkmail_kernel.display import readable

#: Columns of ``identity_merges``.
MERGE_COLUMNS = (
    "merged_at",
    "merge",
    "identity",
    "kept_id",
    "merged_id",
    "kept_contact_id",
    "merged_contact_id",
    "kept_value",
    "merged_value",
    "detail",
)


def identity_merges(
    *, since: datetime | None = None, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return every identity merge: what was kept, what was merged into it, and why.

    One row per merge, oldest first: ``merge`` is "contact" (a contact merged into the
    oldest one holding the same address), "contact_point" (a spelling merged into the
    oldest point of its identity) or "suppression"; ``kept_id``/``merged_id`` are the
    ids of that kind. The merged row as it was is in the event's data
    (``data["merged_row"]``, see the contact's history). ``since`` (aware) keeps the
    merges made at or after it.
    """
    database = resolve_database(db, url)
    query = sa.select(Event.occurred_at, Event.detail, Event.data).where(Event.kind == "merged")
    if since is not None:
        query = query.where(Event.occurred_at >= since)
    with database.session() as s:
        rows = s.execute(query.order_by(Event.id)).all()
    records: list[dict[str, Any]] = []
    for occurred_at, detail, data in rows:
        data = data or {}
        record = {name: data.get(name) for name in MERGE_COLUMNS}
        record |= {"merged_at": occurred_at, "merge": data.get("merge"), "detail": detail}
        records.append(record)
    frame = pd.DataFrame(records, columns=list(MERGE_COLUMNS))
    for name in ("kept_id", "merged_id", "kept_contact_id", "merged_contact_id"):
        frame[name] = frame[name].astype("Int64")
    frame["merged_at"] = (
        pd.to_datetime(frame["merged_at"], utc=True)
        .astype("datetime64[us, UTC]")
        .dt.tz_convert(config.local_timezone())  # what a person reads: the local zone
    )
    return readable(frame)

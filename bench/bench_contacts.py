"""Time contacts_frame on ~1,000,000 contact points and import_contacts on a 20,000-row CSV.

Run: python bench/bench_contacts.py [--points N] [--url URL]   (default: a temporary SQLite file)
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.db import Contact, ContactPoint


def fill(database: dbmod.Database, n_points: int) -> None:
    """Insert n_points/2 contacts with an e-mail and a phone each, straight through Core."""
    rnd = random.Random(1)
    n_contacts = n_points // 2
    base = datetime(2020, 1, 1, tzinfo=UTC)
    types = ["retail", "wholesale", "vip"]
    with database.engine.begin() as conn:
        for start in range(0, n_contacts, 50_000):
            ids = range(start + 1, min(start + 50_000, n_contacts) + 1)
            conn.execute(sa.insert(Contact), [
                {"id": i, "external_id": f"C{i}", "first_name": "Ján", "last_name": "Novák",
                 "patronymic": "", "gender": "m", "language": "sk",
                 "registered_at": base + timedelta(minutes=i),
                 "attributes": {"customer_type": rnd.choice(types), "visits": i % 7,
                                "city": "Bratislava"},
                 "source": "bench"}
                for i in ids
            ])  # fmt: skip
            conn.execute(sa.insert(ContactPoint), [
                {"contact_id": i, "channel": ch, "value": v, "normalized": v, "type": "main",
                 "kind": "personal", "mailing_allowed": True, "is_preferred": True,
                 "source": "bench"}
                for i in ids
                for ch, v in (("email", f"c{i}@example.sk"), ("phone", f"+4219{i:08d}"))
            ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--url")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        database = dbmod.open_database(url)
        rows = []
        t = time.perf_counter()
        fill(database, args.points)
        rows.append(("fill (Core executemany)", args.points, time.perf_counter() - t))
        t = time.perf_counter()
        df = contacts_frame(database)
        rows.append(("contacts_frame", len(df), time.perf_counter() - t))
        mem = df.memory_usage(deep=True).sum() / 2**20

        csv_path = Path(tmp) / "import.csv"
        with csv_path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "first_name", "last_name", "email", "phone", "opt_in", "city"])
            for i in range(20_000):
                w.writerow([f"N{i}", "Eva", "Malá", f"n{i}@example.sk", f"+421905{i:06d}", "yes",
                            "Košice"])  # fmt: skip
        t = time.perf_counter()
        r = import_contacts(csv_path, db=database, progress=False)
        rows.append((f"import_contacts ({r.inserted} new)", 20_000, time.perf_counter() - t))
        t = time.perf_counter()
        r = import_contacts(csv_path, db=database, progress=False)
        rows.append((f"re-import ({r.unchanged} unchanged)", 20_000, time.perf_counter() - t))
        dbmod.close_all()
    print(f"database: {database.dialect}; frame memory {mem:.0f} MiB;"
          f" attribute columns {[c for c in df.columns][16:]}")  # fmt: skip
    print(f"{'step':38} {'rows':>10} {'seconds':>9} {'rows/s':>10}")
    for name, n, secs in rows:
        print(f"{name:38} {n:>10,} {secs:>9.2f} {n / secs:>10,.0f}")


if __name__ == "__main__":
    main()

"""Bounce classification measured on every labelled corpus under tests/data/bounces.

Prints, per source and for the held-out part: messages, recognised (the right kind),
right first recipient, exact status where one is stated, auto-replies or delivery
reports taken for bounces, crashes. Exits 1 when a goal is missed:
>= 98 % recognised, >= 97 % right recipient, >= 95 % exact status, 0 false bounces, 0 crashes.

    .venv/bin/python bench/bounce_corpus.py [--verbose]
"""

from __future__ import annotations

import csv
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bulkmail_kernel.deliverability.classify import BOUNCE_KINDS, classify_message

ROOT = Path(__file__).resolve().parents[1] / "tests" / "data" / "bounces"
GOALS = {"recognised": 0.98, "recipient": 0.97, "status": 0.95}


@dataclass
class Score:
    """Counts for one group of samples."""

    messages: int = 0
    recognised: int = 0
    with_recipient: int = 0
    recipient: int = 0
    with_status: int = 0
    status: int = 0
    false_bounces: int = 0
    crashes: int = 0
    misses: list[str] = field(default_factory=list)

    def rate(self, hit: int, total: int) -> float:
        """Return hit / total (1.0 when there is nothing to judge)."""
        return hit / total if total else 1.0

    def rates(self) -> dict[str, float]:
        """Return the three goal rates."""
        return {
            "recognised": self.rate(self.recognised, self.messages),
            "recipient": self.rate(self.recipient, self.with_recipient),
            "status": self.rate(self.status, self.with_status),
        }

    def ok(self) -> bool:
        """Return whether every goal is met."""
        rates = self.rates()
        return (
            all(rates[k] >= v for k, v in GOALS.items())
            and not self.false_bounces
            and not self.crashes
        )


def labels(root: Path = ROOT) -> list[tuple[str, Path, dict[str, str]]]:
    """Return (source, file, label row) for every labelled sample."""
    found = []
    for table in sorted(root.glob("*/labels.csv")):
        with table.open(newline="") as f:
            for row in csv.DictReader(f):
                found.append((table.parent.name, table.parent / row["file"], row))
    return found


def measure(root: Path = ROOT) -> dict[str, Score]:
    """Return the score per source, plus ``all`` and ``held-out``."""
    scores: dict[str, Score] = {}
    for source, path, row in labels(root):
        groups = [source, "all"] + (["held-out"] if row.get("heldout") == "1" else [])
        try:
            found = classify_message(path.read_bytes())
            kind, recipient, status = found.kind, found.recipient or "", found.status or ""
            recipients = [r.recipient for r in found.info.recipients] if found.info else []
        except Exception:
            kind, recipient, status, recipients = "crash", "", "", []
            traceback.print_exc()
        for name in groups:
            s = scores.setdefault(name, Score())
            s.messages += 1
            s.crashes += kind == "crash"
            s.recognised += kind == row["kind"]
            if row["kind"] in ("auto_reply", "delivery_report") and kind in BOUNCE_KINDS:
                s.false_bounces += 1
            if row["recipient"]:
                s.with_recipient += 1
                s.recipient += recipient == row["recipient"]
            if row["status"]:
                s.with_status += 1
                s.status += status == row["status"]
            if (
                kind != row["kind"]
                or (row["recipient"] and recipient != row["recipient"])
                or (row["status"] and status != row["status"])
            ):
                s.misses.append(
                    f"{source}/{path.name}: want {row['kind']} {row['recipient']} "
                    f"{row['status']}, got {kind} {recipient} {status} {recipients[1:3]}"
                )
    return scores


def main() -> int:
    """Print the figures per source; return 1 if a goal is missed."""
    scores = measure()
    print(
        f"{'source':24} {'msgs':>5} {'recognised':>11} {'recipient':>10} "
        f"{'status':>8} {'false bnc':>9} {'crashes':>7}"
    )
    for name, s in scores.items():
        r = s.rates()
        print(
            f"{name:24} {s.messages:5d} {r['recognised']:11.1%} {r['recipient']:10.1%} "
            f"{r['status']:8.1%} {s.false_bounces:9d} {s.crashes:7d}"
        )
    if "--verbose" in sys.argv:
        for miss in scores["all"].misses:
            print("  miss:", miss)
    return 0 if scores["all"].ok() and scores.get("held-out", Score()).ok() else 1


if __name__ == "__main__":
    sys.exit(main())

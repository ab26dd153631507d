"""The outbox: the one owner of messages, their bodies and events, and suppressions.

Every write to those tables goes through a module here, and everything else asks:

- :mod:`.queue` — registration stores its messages; the analyst lists, removes, requeues;
- :mod:`.store` — the send loop and the worker claim, mark, record and release;
- :mod:`.domains` — each recipient's mailbox provider and its per-hour limit;
- :mod:`.recovery` — the workers' rows, and what a dead worker held taken back;
- :mod:`.schedule` — scheduled campaigns found too late set ``late``;
- :mod:`.suppressions` — unsubscribes and the one suppression insert;
- :mod:`.bounces` — what the bounce mailbox concludes, recorded;
- :mod:`.handover` — SendPulse hand-overs and EuroSMS delivery reports, recorded;
- :mod:`.erasure` — a person erased on request: their history anonymised;
- :mod:`.lookup` — which campaign, which sender account.

``tests/test_architecture.py`` checks that no module outside this package writes them.
"""

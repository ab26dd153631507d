"""Reports across campaigns, hand-made unsubscribes, and re-runnable campaign creation."""

from __future__ import annotations

import matplotlib
import pytest
from sending_support import address, make_campaign, sink_account

from bulkmail_kernel import (
    create_campaign,
    history,
    list_campaigns,
    list_suppressions,
    plot_timeline,
    queue,
    send,
    unsubscribe_address,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.servers.sink import Sink

matplotlib.use("Agg")


def test_list_campaigns_counts_every_status(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 6, name="spring", rate_per_hour=360_000)
    make_campaign(database, 3, name="summer", first=100)
    send("spring", progress=False, db=database)
    frame = list_campaigns(db=database).set_index("name")
    assert list(frame.index) == ["spring", "summer"]
    assert frame.loc["spring", "sent"] == 6
    assert frame.loc["spring", "queued"] == 0
    assert frame.loc["summer", "queued"] == 3
    assert frame.loc["summer", "sent"] == 0
    assert str(frame["registered_at"].dtype).startswith("datetime64")


def test_plot_timeline_draws_the_sends(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 5, name="spring", rate_per_hour=360_000)
    send("spring", progress=False, db=database)
    ax = plot_timeline("spring", db=database)
    assert ax.get_ylabel() == "messages per second"
    assert sum(p.get_height() for p in ax.patches) == 5, "not every send was drawn"
    empty = plot_timeline(make_campaign(database, 1, name="later", first=50), db=database)
    assert empty.get_title() == "later: nothing sent yet"


def test_unsubscribe_address_suppresses_and_stops_queued_mail(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 4, name="spring", rate_per_hour=360_000)
    # A phone call: the analyst types the address with a capitalised domain.
    assert unsubscribe_address(address(2).replace("example.net", "EXAMPLE.NET"), db=database)
    send("spring", progress=False, db=database)
    delivered = {r for m in sink.messages for r in m.rcpt_tos}
    assert address(2) not in delivered
    assert address(0) in delivered
    supp = list_suppressions(reason="unsubscribe", db=database)
    assert address(2) in set(supp["address"])
    frame = contacts_frame(database).set_index("address")
    assert not frame.loc[address(2), "mailing_allowed"]
    assert frame.loc[address(2), "suppressed"]
    contact_id = int(frame.loc[address(2), "contact_id"])
    assert "unsubscribed" in set(history(contact_id, db=database)["kind"])
    # An address nobody has is still suppressed, so a later import of it is not mailed.
    assert unsubscribe_address("stranger@example.com", db=database) is False
    assert "stranger@example.com" in set(list_suppressions(db=database)["address"])


def test_create_campaign_exist_ok_returns_the_same_campaign(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    first = create_campaign("again", sender="sink", db=database)
    with pytest.raises(SendError, match="already exists"):
        create_campaign("again", sender="sink", db=database)
    second = create_campaign("again", sender="sink", rate_per_hour=5, exist_ok=True, db=database)
    assert second.id == first.id
    assert second.rate_per_hour == first.rate_per_hour  # returned unchanged
    assert queue("again", db=database).empty

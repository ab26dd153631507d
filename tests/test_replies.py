"""What an SMTP refusal says: the enhanced status code first, then the basic code and the words."""

# The reply table reads best one real reply a line, however long the reply.
# ruff: noqa: E501

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkmail_kernel.transports import classify_smtp
from bulkmail_kernel.transports.replies import (
    ACTIONS,
    BREAKER_CATEGORIES,
    by_words,
    classify_reply,
    enhanced_code,
    stored_category,
)

# (code, reply text as smtplib hands it over, stage, outcome, suppressed, category)
REPLIES = [
    # Bad mailbox or domain: failed and suppressed, at RCPT and after DATA alike.
    (550, "5.1.1 <b@x.sk>: Recipient address rejected: User unknown", "rcpt", "failed", True, "mailbox"),
    (550, "5.1.1 The email account that you tried to reach does not exist.\n5.1.1 https://support.google.com/mail/?p=NoSuchUser", "data", "failed", True, "mailbox"),
    (550, "5.1.2 Bad destination system address", "rcpt", "failed", True, "mailbox"),
    (556, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "rcpt", "failed", True, "mailbox"),
    (550, "5.1.10 null MX", "data", "failed", True, "mailbox"),
    (550, "5.1.6 mailbox moved", "rcpt", "failed", True, "mailbox"),
    (550, "5.2.1 The email account that you tried to reach is disabled.", "rcpt", "failed", True, "mailbox"),
    (550, "5.2.1 mailbox disabled", "data", "failed", True, "mailbox"),
    # Our own sender address is not the recipient's fault.
    (553, "5.1.8 <news@shop.sk>: Sender address rejected: Domain not found", "rcpt", "failed", False, "sender"),
    (550, "5.1.0 <news@shop.sk>: Sender address rejected: not owned by user", "rcpt", "failed", False, "sender"),
    (550, "5.1.7 bad sender mailbox syntax", "rcpt", "failed", False, "sender"),
    # Mailbox full: retried like a 4xx, a soft bounce, nobody suppressed.
    (552, "5.2.2 The email account that you tried to reach is over quota.", "rcpt", "deferred", False, "mailbox_full"),
    (552, "5.2.2 mailbox full", "data", "deferred", False, "mailbox_full"),
    (452, "4.2.2 mailbox full", "rcpt", "deferred", False, "mailbox_full"),
    # Too big: failed, nobody suppressed.
    (552, "5.2.3 Message exceeds maximum size", "data", "failed", False, "size"),
    (552, "5.3.4 Message too big for system", "data", "failed", False, "size"),
    # Policy: the relay refuses us. Failed, nobody suppressed, whatever the stage.
    (554, "5.7.1 Service unavailable; Client host [203.0.113.9] blocked using zen.spamhaus.org", "rcpt", "failed", False, "policy"),
    (554, "5.7.1 Service unavailable; Client host [203.0.113.9] blocked using zen.spamhaus.org", "data", "failed", False, "policy"),
    (550, "5.7.26 Unauthenticated email from shop.sk is not accepted due to domain's DMARC policy", "data", "failed", False, "policy"),
    (550, "5.7.1 <b@x.sk>: Relay access denied", "rcpt", "failed", False, "policy"),
    (550, "5.7.606 Access denied, banned sending IP [203.0.113.9]", "rcpt", "failed", False, "policy"),
    (554, "5.7.1 Message rejected as spam", "data", "failed", False, "policy"),
    (550, "5.7.1 user unknown", "rcpt", "failed", False, "policy"),  # the code wins over words
    # System, network, protocol: failed, nobody suppressed.
    (554, "5.3.0 mail system full", "rcpt", "failed", False, "system"),
    (550, "5.4.1 Recipient address rejected: Access denied", "rcpt", "failed", False, "system"),
    (554, "5.4.6 routing loop detected", "data", "failed", False, "system"),
    (501, "5.5.4 Invalid argument", "rcpt", "failed", False, "system"),
    (550, "5.2.0 mailbox unavailable", "rcpt", "failed", False, "system"),
    (554, "5.6.0 Message content rejected", "data", "failed", False, "content"),
    # No enhanced code (or the undefined X.0.0): the words, then the basic code.
    (550, "Requested action not taken: mailbox unavailable", "rcpt", "failed", True, "mailbox"),
    (550, "No such user here", "rcpt", "failed", True, "mailbox"),
    (550, "<b@x.sk>... User unknown", "data", "failed", True, "mailbox"),
    (550, "5.0.0 <b@x.sk>: mailbox does not exist", "rcpt", "failed", True, "mailbox"),
    (551, "User not local; please try <c@y.sk>", "rcpt", "failed", True, "mailbox"),
    (553, "mailbox name not allowed", "rcpt", "failed", True, "mailbox"),
    (550, "Mailbox unavailable: blocked by Spamhaus", "rcpt", "failed", False, "policy"),
    (554, "Your access to this mail system has been rejected due to the sending MTA's poor reputation", "rcpt", "failed", False, "policy"),
    (550, "Rejected: listed at Barracuda Reputation Block List", "rcpt", "failed", False, "policy"),
    (550, "Message rejected: SPF check failed", "data", "failed", False, "policy"),
    (554, "JunkMail rejected - blacklisted at bl.spamcop.net", "rcpt", "failed", False, "policy"),
    (550, "5.0.0 blocklist", "rcpt", "failed", False, "policy"),
    (550, "Requested action not taken", "rcpt", "failed", True, "mailbox"),
    (550, "Requested action not taken", "data", "failed", False, "content"),
    (552, "Requested mail action aborted: exceeded storage allocation", "rcpt", "deferred", False, "mailbox_full"),
    (552, "Requested mail action aborted: exceeded storage allocation", "data", "failed", False, "size"),
    (552, "Mailbox is full", "data", "deferred", False, "mailbox_full"),
    (554, "Transaction failed", "rcpt", "failed", False, "system"),
    (554, "Transaction failed", "data", "failed", False, "content"),
    (500, "Syntax error, command unrecognized", "rcpt", "failed", False, "system"),
    # Temporary: always retried, whatever the category.
    (451, "4.7.1 Client host blocked using zen.spamhaus.org, try later", "rcpt", "deferred", False, "policy"),
    (421, "4.7.0 too many connections", "rcpt", "deferred", False, "policy"),
    (450, "busy", "rcpt", "deferred", False, "system"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "text", "stage", "status", "suppress", "category"), REPLIES)
def test_reply_table(
    code: int, text: str, stage: str, status: str, suppress: bool, category: str
) -> None:
    result = classify_smtp(code, text, stage=stage)  # type: ignore[arg-type]
    assert (result.status, result.suppress, result.category) == (status, suppress, category)
    assert result.code == code
    assert result.detail == f"{code} {text}"


def test_only_a_bad_mailbox_suppresses_and_only_refusals_about_us_trip_the_breaker() -> None:
    assert {c for c, (_, suppress) in ACTIONS.items() if suppress} == {"mailbox"}
    assert {c for c, (status, _) in ACTIONS.items() if status == "deferred"} == {"mailbox_full"}
    assert set(ACTIONS) - BREAKER_CATEGORIES == {"mailbox", "mailbox_full"}


def test_a_blocklisting_at_rcpt_no_longer_suppresses() -> None:
    # Issue 14: 20 of 20 recipients became hard bounces on this one answer.
    reply = "5.7.1 Service unavailable; Client host [x] blocked using zen.spamhaus.org"
    rcpt = classify_smtp(554, reply, stage="rcpt")
    data = classify_smtp(554, reply, stage="data")
    assert rcpt == data
    assert (rcpt.status, rcpt.suppress, rcpt.category) == ("failed", False, "policy")


def test_login_and_sender_refusals_stay_fatal() -> None:
    assert classify_smtp(535, "5.7.8 bad credentials", stage="rcpt").status == "fatal"
    assert classify_smtp(530, "5.7.0 Authentication required", stage="mail").category == "auth"
    refused = classify_smtp(553, "5.7.1 sender not allowed", stage="mail")
    assert (refused.status, refused.category) == ("fatal", "sender")
    assert classify_smtp(250, "2.0.0 OK", stage="data").category == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1 x", (5, 1, 1)),
        ("  4.7.0 x", (4, 7, 0)),
        ("5.1.10 x", (5, 1, 10)),
        ("5.7.606 x", (5, 7, 606)),
        ("blocked 5.7.1", None),
        ("5.1 x", None),
        ("3.1.1 x", None),
        ("", None),
    ],
)
def test_enhanced_code_starts_the_text(text: str, expected: tuple[int, int, int] | None) -> None:
    assert enhanced_code(text) == expected


def test_words_policy_before_mailbox() -> None:
    # "mailbox unavailable" is every 550's RFC 5321 text, blocklistings included.
    assert by_words("mailbox unavailable, blocked using b.barracudacentral.org") == "policy"
    assert by_words("mailbox unavailable") == "mailbox"
    assert by_words("all fine") is None
    assert classify_reply(550, "no words at all") == "mailbox"
    assert classify_reply(550, "no words at all", after_data=True) == "content"


@pytest.mark.parametrize(
    ("status", "code", "error", "expected"),
    [
        ("failed", "554", "554 5.7.1 Client host [x] blocked using zen.spamhaus.org", "policy"),
        ("failed", "550", "550 5.1.1 no such user", "mailbox"),
        ("failed", "552", "552 5.3.4 too big", "size"),
        ("failed", "450", "gave up after 3 attempts: 450 4.2.0 busy", "gave_up"),
        ("failed", "5.1.1", "hard bounce: 5.1.1 user unknown", "bounce"),
        ("failed", None, "not sent: a header was refused", ""),
        ("failed", "250", "250 ok", ""),
        ("removed", None, "campaign cancelled", ""),
        ("unknown", None, "connection lost after the message was sent", ""),
    ],
)
def test_stored_category_reads_a_failed_message(
    status: str, code: str | None, error: str, expected: str
) -> None:
    assert stored_category(status, code, error) == expected


@given(
    code=st.integers(min_value=400, max_value=599),
    text=st.text(max_size=200),
    stage=st.sampled_from(["rcpt", "data"]),
)
def test_any_refusal_gets_one_category_and_only_a_mailbox_suppresses(
    code: int, text: str, stage: str
) -> None:
    result = classify_smtp(code, text, stage=stage)  # type: ignore[arg-type]
    if code in (530, 534, 535, 538):
        assert result.status == "fatal"
        return
    assert result.category in ACTIONS
    assert result.suppress == (result.category == "mailbox")
    assert result.status == ("deferred" if code < 500 else ACTIONS[result.category][0])  # type: ignore[index]

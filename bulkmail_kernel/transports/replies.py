"""What an SMTP refusal says about the recipient, the message or us: a pure, table-driven reading.

A reply is read by its RFC 3463 enhanced status code (``5.1.1``, ``5.7.1``) when it
has one, else by its basic code and its words. The answer is a :data:`Category`,
and what the engine does follows from it alone (:data:`ACTIONS`):

============  =========================================  ===================================
category      what it means                              what happens to the message
============  =========================================  ===================================
mailbox       the address is bad: no such user or        failed; the address is suppressed
              domain, null MX (5.1.x), disabled (5.2.1)  (a hard bounce)
mailbox_full  the mailbox is over quota (x.2.2)          retried like a 4xx; a soft bounce
size          the message is too big (5.2.3, 5.3.4)      failed; nobody is suppressed
policy        the relay refuses *us*: blocklist, SPF,    failed; nobody is suppressed; the
              DKIM, DMARC, spam, relaying denied (5.7.x) circuit breaker counts it
system        the relay or the network cannot take it    failed; nobody is suppressed; the
              (5.3.x, 5.4.x, 5.5.x, other 5.2.x)         circuit breaker counts it
content       the relay refuses the content (5.6.x, a    failed; nobody is suppressed; the
              bare 5xx after DATA)                       circuit breaker counts it
sender        our own sender address is refused          failed; nobody is suppressed; the
              (5.1.7, 5.1.8)                             circuit breaker counts it
============  =========================================  ===================================

Only ``mailbox`` says the address itself is bad: a blocklisting or a DMARC failure
answered at RCPT is about the sending server, and suppressing on it would burn the
whole list (issue 14). A 4xx reply is read by the same table for its category, but
is always retried.
"""

from __future__ import annotations

import re
from typing import Final, Literal

Category = Literal["mailbox", "mailbox_full", "size", "policy", "system", "content", "sender"]

#: category -> (permanent outcome, suppress the address).
ACTIONS: Final[dict[Category, tuple[Literal["failed", "deferred"], bool]]] = {
    "mailbox": ("failed", True),
    "mailbox_full": ("deferred", False),
    "size": ("failed", False),
    "policy": ("failed", False),
    "system": ("failed", False),
    "content": ("failed", False),
    "sender": ("failed", False),
}

#: Refusals about us or our message rather than one recipient: N of them in a row pause a
#: campaign (see ``outbox.breaker``) before the whole list is refused.
BREAKER_CATEGORIES: Final[frozenset[str]] = frozenset(
    {"policy", "system", "content", "sender", "size"}
)

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")

#: (subject, detail) of an enhanced code -> category; detail None is the whole subject.
#: RFC 3463 section 3, RFC 7505 (5.1.10 null MX).
_BY_ENHANCED: Final[dict[tuple[int, int | None], Category]] = {
    (1, 7): "sender",  # bad sender's mailbox address syntax
    (1, 8): "sender",  # bad sender's system address (domain not found)
    (1, None): "mailbox",  # bad mailbox, bad domain, syntax, moved, null MX (1.10)
    (2, 1): "mailbox",  # mailbox disabled, not accepting messages
    (2, 2): "mailbox_full",
    (2, 3): "size",  # message length exceeds administrative limit
    (2, None): "system",  # other or undefined mailbox status, list expansion
    (3, 4): "size",  # message too big for system
    (3, None): "system",
    (4, None): "system",
    (5, None): "system",
    (6, None): "content",
    (7, None): "policy",
}

_SENDER = re.compile(r"sender address rejected|sender domain", re.IGNORECASE)

# Words that give the reason away when the code does not. Policy first: a blocklisting
# often also says "mailbox unavailable" (the RFC 5321 text of every 550).
_WORDS: Final[tuple[tuple[Category, re.Pattern[str]], ...]] = (
    (
        "policy",
        re.compile(
            r"block(?:ed|list(?:ed)?)|black ?list|spamhaus|spamcop|barracuda|\bsorbs\b|"
            r"\b(?:rbl|dnsbl)\b|policy|reputation|dmarc|\bspf\b|\bdkim\b|"
            r"rejected as spam|\bspam\b|relay(?:ing)? (?:access )?denied|not permitted to relay|"
            r"relay not permitted|unable to relay|access denied|banned",
            re.IGNORECASE,
        ),
    ),
    ("sender", _SENDER),
    (
        "mailbox_full",
        re.compile(
            r"mailbox (?:is )?full|over ?quota|quota exceeded|exceeded (?:its|the) quota|"
            r"insufficient (?:system )?storage",
            re.IGNORECASE,
        ),
    ),
    (
        "mailbox",
        re.compile(
            r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)|"
            r"mailbox (?:unavailable|not found|does not exist)|does ?n[o']t exist|"
            r"(?:invalid|unknown) (?:recipient|mailbox|address)|recipient (?:unknown|not found)|"
            r"unrouteable address|account (?:disabled|has been disabled|is disabled)",
            re.IGNORECASE,
        ),
    ),
    ("size", re.compile(r"too (?:big|large)|size limit|message size", re.IGNORECASE)),
)


def enhanced_code(text: str) -> tuple[int, int, int] | None:
    """Return the RFC 3463 enhanced status code that starts ``text``, or None."""
    found = _ENHANCED.match(text)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def by_words(text: str) -> Category | None:
    """Return the category the words of a reply give away, or None."""
    return next((category for category, words in _WORDS if words.search(text)), None)


def classify_reply(code: int, text: str, *, after_data: bool = False) -> Category:
    """Return what the refusal ``code`` ``text`` (4xx or 5xx) says: see the module's table.

    ``after_data`` is a reply to the content rather than to RCPT: the address was
    taken then, so a bare 550 without a word about the mailbox is about the message.
    """
    enhanced = enhanced_code(text)
    if enhanced is not None and (enhanced[1], enhanced[2]) != (0, 0):
        _, subject, detail = enhanced
        found = _BY_ENHANCED.get((subject, detail)) or _BY_ENHANCED.get((subject, None))
        if found == "mailbox" and _SENDER.search(text):
            return "sender"  # "5.1.0 Sender address rejected": our address, not theirs
        if found is not None:
            return found
    # X.0.0 (undefined) or no enhanced code: the words, then the basic code.
    worded = by_words(text)
    if worded is not None:
        return worded
    if code in (550, 551, 553):
        # RFC 5321: mailbox unavailable, user not local, mailbox name not allowed.
        return "content" if after_data else "mailbox"
    if code == 552:
        # RFC 5321 4.5.3.1.10: a 552 at RCPT is taken as 452 (storage); after DATA, size.
        return "size" if after_data else "mailbox_full"
    if 400 <= code < 500:
        return "system"
    return "content" if after_data and code == 554 else "system"


def stored_category(status: str, last_code: str | None, last_error: str) -> str:
    """Return why a stored message failed, read from its last reply code and error.

    The category of its last refusal (see the module's table); ``gave_up`` for a
    message whose retries expired; ``bounce`` for one a bounce report failed later;
    "" when there is no SMTP reply to read (removed, unknown, not sent).
    """
    if status != "failed":
        return ""
    if last_error.startswith("gave up after"):
        return "gave_up"
    if last_error.startswith(("hard bounce:", "soft bounce:")):
        return "bounce"
    if not (last_code or "").isdigit() or not last_error.startswith(f"{last_code} "):
        return ""
    code = int(last_code or 0)
    if not 400 <= code < 600:
        return ""
    # The content stage is not stored: a bare 550 reads as a mailbox, as at RCPT.
    return classify_reply(code, last_error[len(f"{last_code} ") :])

"""Connection settings found from an address, the way mail programs set up an account.

:func:`suggest_account_settings` looks in three places, first hit wins per server:

1. a table of the mailbox providers our recipients' firms use most (their published
   settings: Gmail, Microsoft, Yahoo, Seznam, Centrum, Azet, Zoznam, Mail.ru, Yandex,
   ukr.net, iCloud, GMX, WEB.DE);
2. the domain's Mozilla autoconfig file (``https://autoconfig.<domain>/mail/config-v1.1.xml``,
   then ``https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml``), the format
   Thunderbird reads;
3. the domain's SRV records (RFC 6186 ``_submission._tcp``, ``_imaps._tcp``; RFC 8314
   ``_submissions._tcp``) through dnspython where it is installed.

Every network look-up has a short timeout and is never fatal: what failed goes into
``notes`` and the next place is asked. Nothing here logs in: that is
:func:`~bulkmail_kernel.providers.checks.check_account`.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

#: (host, port, security) of a server.
Server = tuple[str, int, str]

_GOOGLE = (("smtp.gmail.com", 465, "ssl"), ("imap.gmail.com", 993, "ssl"))
_MICROSOFT = (("smtp-mail.outlook.com", 587, "starttls"), ("outlook.office365.com", 993, "ssl"))
_SEZNAM = (("smtp.seznam.cz", 465, "ssl"), ("imap.seznam.cz", 993, "ssl"))
_MAILRU = (("smtp.mail.ru", 465, "ssl"), ("imap.mail.ru", 993, "ssl"))
_YANDEX = (("smtp.yandex.ru", 465, "ssl"), ("imap.yandex.ru", 993, "ssl"))
_APPLE = (("smtp.mail.me.com", 587, "starttls"), ("imap.mail.me.com", 993, "ssl"))
_GMX = (("mail.gmx.net", 587, "starttls"), ("imap.gmx.net", 993, "ssl"))


def _own(domain: str) -> tuple[Server, Server]:
    """Return smtp.<domain>:465 and imap.<domain>:993 over SSL, the common Slovak/Czech shape."""
    return (f"smtp.{domain}", 465, "ssl"), (f"imap.{domain}", 993, "ssl")


#: domain → (SMTP, IMAP), from each provider's published settings for mail programs.
PROVIDERS: dict[str, tuple[Server, Server]] = {
    "gmail.com": _GOOGLE,
    "googlemail.com": _GOOGLE,
    "outlook.com": _MICROSOFT,
    "hotmail.com": _MICROSOFT,
    "live.com": _MICROSOFT,
    "msn.com": _MICROSOFT,
    "yahoo.com": (("smtp.mail.yahoo.com", 465, "ssl"), ("imap.mail.yahoo.com", 993, "ssl")),
    "seznam.cz": _SEZNAM,
    "email.cz": _SEZNAM,
    "post.cz": _SEZNAM,
    "centrum.sk": _own("centrum.sk"),
    "azet.sk": _own("azet.sk"),
    "centrum.cz": _own("centrum.cz"),
    "atlas.sk": _own("atlas.sk"),
    "atlas.cz": _own("atlas.cz"),
    "post.sk": _own("post.sk"),
    "zoznam.sk": _own("zoznam.sk"),
    "mail.ru": _MAILRU,
    "inbox.ru": _MAILRU,
    "list.ru": _MAILRU,
    "bk.ru": _MAILRU,
    "yandex.ru": _YANDEX,
    "ya.ru": _YANDEX,
    "yandex.com": _YANDEX,
    "ukr.net": _own("ukr.net"),
    "icloud.com": _APPLE,
    "me.com": _APPLE,
    "mac.com": _APPLE,
    "gmx.net": _GMX,
    "gmx.de": _GMX,
    "gmx.at": _GMX,
    "gmx.com": (("mail.gmx.com", 587, "starttls"), ("imap.gmx.com", 993, "ssl")),
    "web.de": (("smtp.web.de", 587, "starttls"), ("imap.web.de", 993, "ssl")),
}

#: Where autoconfig files are looked for; ``{domain}`` is the address's domain.
AUTOCONFIG_URLS: tuple[str, ...] = (
    "https://autoconfig.{domain}/mail/config-v1.1.xml?emailaddress={address}",
    "https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={address}",
)

_SOCKET_TYPES = {"SSL": "ssl", "STARTTLS": "starttls", "PLAIN": "none"}
#: SRV service → (which server, its security), most secure first (RFC 8314 prefers SSL).
_SRV_SERVICES = (
    ("_submissions._tcp", "smtp", "ssl"),
    ("_submission._tcp", "smtp", "starttls"),
    ("_imaps._tcp", "imap", "ssl"),
    ("_imap._tcp", "imap", "starttls"),
)

#: Looks up SRV records of a name; returns dnspython ``SRV`` rdata (or an empty list).
SrvLookup = Callable[[str], Iterable[Any]]


def suggest_account_settings(
    address: str,
    *,
    network: bool = True,
    autoconfig_urls: Sequence[str] = AUTOCONFIG_URLS,
    srv_lookup: SrvLookup | None = None,
    timeout_s: float = 3.0,
) -> dict[str, Any]:
    """Suggest SMTP and IMAP settings for ``address`` and say where each came from.

    Returns ``{"address", "settings", "source", "notes"}``: ``settings`` is ready for
    ``add_sender_account(settings=...)`` (host, port, security, user, and ``imap``
    when found); ``source`` says for ``smtp`` and ``imap`` whether it came from the
    ``table``, an ``autoconfig`` URL or an ``srv`` record (None: not found);
    ``notes`` lists the look-ups that failed. ``network=False`` asks the table only;
    ``autoconfig_urls`` and ``srv_lookup`` point the look-ups elsewhere (a test
    server, a company resolver).
    """
    local, _, domain = address.strip().rpartition("@")
    if not local or not domain or "." not in domain:
        from bulkmail_kernel.exceptions import ConfigError

        raise ConfigError(
            f"suggest_account_settings: {address!r} is not an e-mail address (name@domain.sk)"
        )
    domain = domain.lower().rstrip(".")
    found: dict[str, Server | None] = {"smtp": None, "imap": None}
    source: dict[str, str | None] = {"smtp": None, "imap": None}
    notes: list[str] = []

    def take(kind: str, server: Server | None, where: str) -> None:
        if server is not None and found[kind] is None:
            found[kind], source[kind] = server, where

    if domain in PROVIDERS:
        smtp, imap = PROVIDERS[domain]
        take("smtp", smtp, "table")
        take("imap", imap, "table")
    if network and None in found.values():
        for template in autoconfig_urls:
            url = template.format(domain=domain, address=quote(address.strip(), safe="@"))
            try:
                servers = parse_autoconfig(_fetch(url, timeout_s))
            except (OSError, ValueError) as exc:
                notes.append(f"autoconfig {url}: {exc}")
                continue
            take("smtp", servers[0], f"autoconfig {url}")
            take("imap", servers[1], f"autoconfig {url}")
            if None not in found.values():
                break
    if network and None in found.values():
        lookup = srv_lookup or _dns_srv_lookup(timeout_s, notes)
        if lookup is not None:
            for service, kind, security in _SRV_SERVICES:
                if found[kind] is not None:
                    continue
                name = f"{service}.{domain}"
                try:
                    server = server_from_srv(lookup(name), security)
                except Exception as exc:  # any resolver failure is only a note: never fatal
                    notes.append(f"srv {name}: {type(exc).__name__}: {exc}")
                    continue
                take(kind, server, f"srv {name}")
    return {
        "address": address.strip(),
        "settings": _settings(address.strip(), found["smtp"], found["imap"]),
        "source": source,
        "notes": notes,
    }


def _settings(address: str, smtp: Server | None, imap: Server | None) -> dict[str, Any]:
    """Return sender-account settings for the servers found; the login is the address."""
    settings: dict[str, Any] = {}
    if smtp is not None:
        settings.update(host=smtp[0], port=smtp[1], security=smtp[2], user=address)
    if imap is not None:
        settings["imap"] = {"host": imap[0], "port": imap[1], "security": imap[2], "user": address}
    return settings


def _fetch(url: str, timeout_s: float) -> bytes:
    """Return the body at ``url`` (at most 64 KB), or raise OSError saying why not."""
    if not url.startswith(("https://", "http://")):
        raise OSError("only http(s) URLs are asked")
    request = urllib.request.Request(url, headers={"User-Agent": "bulkmail-autoconfig"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return bytes(response.read(65536))
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from exc


def parse_autoconfig(xml: bytes) -> tuple[Server | None, Server | None]:
    """Return the (SMTP, IMAP) servers of a Mozilla autoconfig file; ValueError if unreadable."""
    try:
        root = SafeET.fromstring(xml)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        raise ValueError(f"not a readable autoconfig file ({exc})") from exc
    provider = root.find("emailProvider")
    if root.tag != "clientConfig" or provider is None:
        raise ValueError("not an autoconfig file (no clientConfig/emailProvider)")

    def servers(tag: str, kind: str) -> list[Server]:
        out = []
        for node in provider.findall(tag):
            if node.get("type") != kind:
                continue
            host = (node.findtext("hostname") or "").strip()
            port = (node.findtext("port") or "").strip()
            security = _SOCKET_TYPES.get((node.findtext("socketType") or "").strip().upper())
            if host and port.isdigit() and security is not None:
                out.append((host, int(port), security))
        # A mail program offers the first; we prefer encryption from the first byte (RFC 8314).
        return sorted(out, key=lambda s: {"ssl": 0, "starttls": 1}.get(s[2], 2))

    smtp = servers("outgoingServer", "smtp")
    imap = servers("incomingServer", "imap")
    return (smtp[0] if smtp else None), (imap[0] if imap else None)


def server_from_srv(records: Iterable[Any], security: str) -> Server | None:
    """Return the server an RFC 6186 SRV answer points at (lowest priority, highest weight)."""
    usable = [r for r in records if str(r.target) not in (".", "")]
    if not usable:
        return None  # no records, or "." meaning the service is deliberately not offered
    best = min(usable, key=lambda r: (r.priority, -r.weight))
    return str(best.target).rstrip("."), int(best.port), security


def _dns_srv_lookup(timeout_s: float, notes: list[str]) -> SrvLookup | None:
    """Return an SRV look-up through dnspython, or None (noted) when it is not installed."""
    try:
        import dns.exception
        import dns.resolver
    except ImportError:
        notes.append("srv: dnspython is not installed")
        return None
    resolver = dns.resolver.Resolver()
    resolver.lifetime = timeout_s

    def lookup(name: str) -> list[Any]:
        try:
            return list(resolver.resolve(name, "SRV"))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []

    return lookup

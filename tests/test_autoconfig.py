"""Connection settings from an address: the provider table, a real HTTP autoconfig, SRV records."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from http_support import serve
from hypothesis import given
from hypothesis import strategies as st

from bulkmail_kernel import suggest_account_settings
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.providers.autoconfig import PROVIDERS

AUTOCONFIG = textwrap.dedent(
    """\
    <?xml version="1.0" encoding="UTF-8"?>
    <clientConfig version="1.1">
      <emailProvider id="firm.example">
        <domain>firm.example</domain>
        <incomingServer type="pop3">
          <hostname>pop.firm.example</hostname><port>995</port><socketType>SSL</socketType>
        </incomingServer>
        <incomingServer type="imap">
          <hostname>imap.firm.example</hostname><port>143</port>
          <socketType>STARTTLS</socketType>
        </incomingServer>
        <incomingServer type="imap">
          <hostname>mail.firm.example</hostname><port>993</port><socketType>SSL</socketType>
        </incomingServer>
        <outgoingServer type="smtp">
          <hostname>smtp.firm.example</hostname><port>587</port>
          <socketType>STARTTLS</socketType>
          <username>%EMAILADDRESS%</username>
        </outgoingServer>
      </emailProvider>
    </clientConfig>
    """
).encode()


@pytest.fixture
def autoconfig_server() -> Iterator[tuple[str, list[str]]]:
    """Serve AUTOCONFIG at /mail/config-v1.1.xml, 404 elsewhere; record the paths asked."""

    def answer(path: str) -> tuple[int, bytes]:
        if path.startswith("/mail/config-v1.1.xml"):
            return 200, AUTOCONFIG
        if path.startswith("/broken.xml"):
            return 200, b"<html>not here</html>"
        return 404, b"no"

    with serve(answer) as served:
        yield served


def _srv(*texts: str) -> list[Any]:
    return [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV, t) for t in texts]


def _no_srv(name: str) -> list[Any]:
    return []


@pytest.mark.parametrize(
    ("address", "smtp", "imap"),
    [
        ("eva@gmail.com", ("smtp.gmail.com", 465, "ssl"), ("imap.gmail.com", 993, "ssl")),
        ("eva@googlemail.com", ("smtp.gmail.com", 465, "ssl"), ("imap.gmail.com", 993, "ssl")),
        (
            "Eva@Hotmail.com",
            ("smtp-mail.outlook.com", 587, "starttls"),
            ("outlook.office365.com", 993, "ssl"),
        ),
        ("jan@email.cz", ("smtp.seznam.cz", 465, "ssl"), ("imap.seznam.cz", 993, "ssl")),
        ("jan@centrum.sk", ("smtp.centrum.sk", 465, "ssl"), ("imap.centrum.sk", 993, "ssl")),
        ("jan@azet.sk", ("smtp.azet.sk", 465, "ssl"), ("imap.azet.sk", 993, "ssl")),
        ("ivan@bk.ru", ("smtp.mail.ru", 465, "ssl"), ("imap.mail.ru", 993, "ssl")),
        ("ivan@ya.ru", ("smtp.yandex.ru", 465, "ssl"), ("imap.yandex.ru", 993, "ssl")),
        ("oksana@ukr.net", ("smtp.ukr.net", 465, "ssl"), ("imap.ukr.net", 993, "ssl")),
        ("anna@web.de", ("smtp.web.de", 587, "starttls"), ("imap.web.de", 993, "ssl")),
    ],
)
def test_common_providers_come_from_the_table(
    address: str, smtp: tuple[str, int, str], imap: tuple[str, int, str]
) -> None:
    found = suggest_account_settings(address, network=False)
    settings = found["settings"]
    assert (settings["host"], settings["port"], settings["security"]) == smtp
    assert settings["user"] == address
    assert (
        settings["imap"]["host"],
        settings["imap"]["port"],
        settings["imap"]["security"],
    ) == imap
    assert found["source"] == {"smtp": "table", "imap": "table"}
    assert found["notes"] == []


def test_every_table_entry_is_usable() -> None:
    for domain, servers in PROVIDERS.items():
        for host, port, security in servers:
            assert host.count(".") >= 2, domain
            assert (port, security) in {(465, "ssl"), (587, "starttls"), (993, "ssl")}, domain


def test_a_table_hit_asks_no_network(autoconfig_server: tuple[str, list[str]]) -> None:
    base, asked = autoconfig_server
    suggest_account_settings("jan@seznam.cz", autoconfig_urls=[base + "/mail/config-v1.1.xml"])
    assert asked == []


def test_autoconfig_from_a_local_server(autoconfig_server: tuple[str, list[str]]) -> None:
    base, asked = autoconfig_server
    urls = [base + "/missing.xml", base + "/mail/config-v1.1.xml?emailaddress={address}"]
    found = suggest_account_settings("news@firm.example", autoconfig_urls=urls, srv_lookup=_no_srv)
    used = f"autoconfig {base}/mail/config-v1.1.xml?emailaddress=news@firm.example"
    assert found["source"] == {"smtp": used, "imap": used}
    assert found["settings"] == {
        "host": "smtp.firm.example",
        "port": 587,
        "security": "starttls",
        "user": "news@firm.example",
        # SSL from the first byte is preferred over the file's first (STARTTLS) entry.
        "imap": {
            "host": "mail.firm.example",
            "port": 993,
            "security": "ssl",
            "user": "news@firm.example",
        },
    }
    assert found["notes"] == [f"autoconfig {base}/missing.xml: HTTP 404"]
    assert asked == ["/missing.xml", "/mail/config-v1.1.xml?emailaddress=news@firm.example"]


def test_srv_records_when_there_is_no_autoconfig(
    autoconfig_server: tuple[str, list[str]],
) -> None:
    base, _ = autoconfig_server
    records = {
        "_submission._tcp.firm.example": _srv(
            "10 5 587 backup.firm.example.", "0 1 587 smtp.firm.example."
        ),
        # "." says the service is deliberately not offered: fall back to _imap._tcp.
        "_imaps._tcp.firm.example": _srv("0 0 0 ."),
        "_imap._tcp.firm.example": _srv("0 0 143 imap.firm.example."),
    }
    found = suggest_account_settings(
        "news@firm.example",
        autoconfig_urls=[base + "/broken.xml"],
        srv_lookup=lambda name: records.get(name, []),
    )
    assert found["settings"]["host"] == "smtp.firm.example"
    assert (found["settings"]["port"], found["settings"]["security"]) == (587, "starttls")
    assert found["settings"]["imap"]["host"] == "imap.firm.example"
    assert found["settings"]["imap"]["security"] == "starttls"
    assert found["source"] == {
        "smtp": "srv _submission._tcp.firm.example",
        "imap": "srv _imap._tcp.firm.example",
    }
    assert found["notes"] == [
        f"autoconfig {base}/broken.xml: not an autoconfig file (no clientConfig/emailProvider)"
    ]


def test_failing_lookups_are_notes_never_errors() -> None:
    def broken(name: str) -> list[Any]:
        raise TimeoutError(f"{name} timed out")

    found = suggest_account_settings(
        "news@firm.example",
        autoconfig_urls=["http://127.0.0.1:9/x.xml", "file:///etc/passwd"],
        srv_lookup=broken,
        timeout_s=0.5,
    )
    assert found["settings"] == {}
    assert found["source"] == {"smtp": None, "imap": None}
    assert found["notes"][1] == "autoconfig file:///etc/passwd: only http(s) URLs are asked"
    assert "srv _submissions._tcp.firm.example: TimeoutError" in found["notes"][2]
    assert len(found["notes"]) == 2 + 4  # two URLs, four SRV names


def test_not_an_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'firm\.sk' is not an e-mail address"):
        suggest_account_settings("firm.sk", network=False)


@given(st.text(max_size=40))
def test_any_text_gets_settings_or_a_clear_refusal(text: str) -> None:
    local, _, domain = text.strip().rpartition("@")
    if local and "." in domain:
        found = suggest_account_settings(text, network=False)
        assert set(found) == {"address", "settings", "source", "notes"}
        assert found["address"] == text.strip()
    else:
        with pytest.raises(ConfigError, match="is not an e-mail address"):
            suggest_account_settings(text, network=False)

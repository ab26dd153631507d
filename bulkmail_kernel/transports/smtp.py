"""SMTP through yagmail's login, with our own bytes over one reused connection.

yagmail handles what is fiddly about logging in (SSL or STARTTLS, the password
from the keyring that ``yagmail.register`` fills, OAuth2 for Gmail), but its
``send()`` is not used: yagmail 0.16 opens a new connection and logs in again for
every message without closing the old one (servers answer "421 too many
connections"), turns newlines into ``<br>``, and derives Message-ID from
From+To+Subject so repeated sends collide. So we log in once and push the bytes
that ``build_mime()`` made over ``yag.smtp``.

The SMTP transaction is spoken step by step (MAIL, RCPT, DATA, content) rather
than through ``sendmail()`` because only then do we know *where* a connection
broke: before the content it is safe to retry, after it the server may already
have accepted the message, and resending silently could deliver it twice. When
the server offers PIPELINING (RFC 2920; Postfix, Exim, Exchange and Gmail do),
MAIL, RCPT and DATA go in one write and the content only after DATA's 354: two
round trips a message instead of four, the same stages, the same answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import smtplib
import ssl
from typing import Any

from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.transports import SendResult, Stage, classify_smtp, connection_lost

log = logging.getLogger("bulkmail")

_BARE_LF = re.compile(rb"(?<!\r)\n")
# Whatever could end or bend an SMTP command line: CR, LF, NUL and the angle brackets.
_UNSAFE_ADDRESS = re.compile(r"[\r\n\0<>]")


def resolve_password(user: str, credential_ref: str) -> str:
    """Return the SMTP password for ``user``: the env var ``credential_ref``, else the keyring.

    Passwords are never read from the database or a notebook cell: the account
    only names where the secret lives.
    """
    if credential_ref and os.environ.get(credential_ref):
        return os.environ[credential_ref]
    try:
        import keyring
        from keyring.errors import KeyringError, NoKeyringError
    except ImportError:  # keyring is a yagmail dependency, but be clear if it is missing
        keyring = None  # type: ignore[assignment]
    env_hint = credential_ref or "BULKMAIL_SMTP_PASSWORD"
    if keyring is not None:
        try:
            password = keyring.get_password("yagmail", user)
        except NoKeyringError as exc:
            raise ConfigError(
                f"SMTP account {user!r}: no keyring is available on this machine "
                f"(usual on a headless server) and the environment variable {env_hint} is not "
                f"set: export {env_hint}=... before starting Jupyter or the worker",
                user=user,
            ) from exc
        except KeyringError as exc:
            raise ConfigError(
                f"SMTP account {user!r}: the keyring failed ({exc}); set {env_hint} instead",
                user=user,
            ) from exc
        if password:
            return password
    raise ConfigError(
        f"SMTP account {user!r}: no password found: run yagmail.register({user!r}, ...) once "
        f"in a terminal, or set the environment variable {env_hint}",
        user=user,
    )


class SmtpTransport:
    """Send over one SMTP connection opened by yagmail's login; reconnect on a drop.

    ``security`` is ``"ssl"`` (port 465), ``"starttls"`` (587) or ``"none"`` (a local
    relay or the sink). An empty ``user`` means the relay takes mail without login.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "starttls",
        user: str = "",
        credential_ref: str = "",
        timeout_s: float = 60.0,
        oauth2_file: str | None = None,
        allow_self_signed: bool = False,
    ) -> None:
        if security not in ("ssl", "starttls", "none"):
            raise ConfigError(
                f"SMTP account {host}:{port}: security={security!r}: use ssl, starttls or none"
            )
        self.host = host
        self.port = int(port)
        self.security = security
        self.user = user
        self.credential_ref = credential_ref
        self.timeout_s = timeout_s
        self.oauth2_file = oauth2_file
        #: Skip certificate verification: for a test relay with a self-signed certificate only.
        self.allow_self_signed = allow_self_signed
        #: How many times we logged in (one per connection opened).
        self.logins = 0
        self._yag: Any = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any], credential_ref: str = "") -> SmtpTransport:
        """Build a transport from a sender account's ``settings`` (host, port, security, user)."""
        if not settings.get("host"):
            raise ConfigError("SMTP account: settings has no 'host': add host, port and security")
        security = settings.get("security", "starttls")
        default_port = {"ssl": 465, "starttls": 587, "none": 25}.get(security, 587)
        return cls(
            settings["host"],
            int(settings.get("port", default_port)),
            security=security,
            user=settings.get("user", ""),
            credential_ref=credential_ref,
            timeout_s=float(settings.get("timeout_s", 60.0)),
            oauth2_file=settings.get("oauth2_file"),
            allow_self_signed=bool(settings.get("allow_self_signed", False)),
        )

    def open(self) -> None:
        """Connect and log in through yagmail; raise SendError if that is refused."""
        import yagmail

        skip_login = not self.user and self.oauth2_file is None
        password = None
        if not skip_login and self.oauth2_file is None:
            password = resolve_password(self.user, self.credential_ref)
        # smtplib's starttls() and SMTP_SSL default to a context that verifies nothing:
        # always hand them a verifying one. Without TLS there is nothing to verify, and
        # loading the CA store was 37 ms of CPU a connection (issue 18: send(connections=4)
        # into a local relay spent more on it than on 1,000 messages' headers).
        context = ssl.create_default_context() if self.security != "none" else None
        if self.allow_self_signed and context is not None:
            log.warning(
                "SMTP %s:%d: certificate verification is OFF (allow_self_signed): "
                "use this for a test relay only",
                self.host,
                self.port,
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        yag = yagmail.SMTP(
            user=self.user or None,
            password=password,
            host=self.host,
            port=self.port,
            smtp_ssl=self.security == "ssl",
            smtp_starttls={"context": context} if self.security == "starttls" else False,
            **({"context": context} if self.security == "ssl" else {}),
            smtp_skip_login=skip_login,
            oauth2_file=self.oauth2_file,
            soft_email_validation=False,
            timeout=self.timeout_s,
        )
        if self.user:
            # yagmail appends "@gmail.com" to a login without "@"; relays with plain
            # user names (Postfix SASL, Exchange) need the name exactly as given.
            yag.user = self.user
        try:
            yag.login()
        except smtplib.SMTPAuthenticationError as exc:
            yag.close()
            raise SendError(
                f"SMTP {self.host}:{self.port}: login as {self.user!r} refused "
                f"({exc.smtp_code} {_text(exc.smtp_error)}): check the password in the keyring "
                f"or {self.credential_ref or 'the environment'}",
                code=exc.smtp_code,
                fatal=True,
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            self._close_quietly(yag)
            raise SendError(
                f"SMTP {self.host}:{self.port}: the server's certificate does not verify "
                f"({exc.verify_message}): fix the relay's certificate, or for a test relay set "
                "allow_self_signed in the sender account's settings",
                fatal=True,
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            self._close_quietly(yag)
            # smtplib raises the same error for a missing AUTH and a missing STARTTLS: only
            # its text tells them apart ("SMTP AUTH extension not supported by server.").
            if "AUTH" in str(exc).replace("STARTTLS", ""):
                raise SendError(self._no_auth_message(), fatal=True) from exc
            raise SendError(
                f"SMTP {self.host}:{self.port}: the relay offers no STARTTLS; refusing to send "
                "the password and the messages in clear (set security to 'ssl' or fix the relay)",
                fatal=True,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise SendError(
                f"SMTP {self.host}:{self.port}: cannot connect ({exc}): check host, port and "
                "security in the sender account",
                fatal=False,
            ) from exc
        self._yag = yag
        self.logins += 1

    def check(self) -> str:
        """Log in as a send would (EHLO, TLS, AUTH), say QUIT, and describe what worked.

        Raises SendError (or ConfigError for a missing password) with the same words a
        send would meet, so an account is refused when it is saved rather than at its
        first message.
        """
        self.open()
        try:
            smtp: smtplib.SMTP = self._yag.smtp
            # Without a login nothing has said EHLO yet: say it, as MAIL would.
            smtp.ehlo_or_helo_if_needed()
            auth = str(smtp.esmtp_features.get("auth", "")).strip()
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise SendError(
                f"SMTP {self.host}:{self.port}: the server broke off after connecting ({exc}): "
                "check host, port and security in the sender account",
                fatal=False,
            ) from exc
        self.close()
        how = {"ssl": "over SSL", "starttls": "after STARTTLS", "none": "without TLS"}
        login = f"logged in as {self.user!r}" if self.user else "no login (the relay needs none)"
        offered = f"AUTH {auth} offered" if auth else "no AUTH offered"
        return (
            f"SMTP {self.host}:{self.port}: EHLO answered {how[self.security]}; {offered}; {login}"
        )

    def _no_auth_message(self) -> str:
        """Return what to say when the relay offers no AUTH but the account has a user."""
        hint = (
            " (many servers offer AUTH only after STARTTLS: set security to 'starttls')"
            if self.security == "none"
            else ""
        )
        return (
            f"SMTP {self.host}:{self.port} offers no login (no AUTH in its EHLO reply) but the "
            f"account has user {self.user!r}: remove the user for a relay that needs none, or "
            f"use the server's submission port 587/465{hint}"
        )

    @staticmethod
    def _close_quietly(yag: Any) -> None:
        if getattr(yag, "smtp", None) is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                yag.smtp.close()

    def _drop(self) -> None:
        yag, self._yag = self._yag, None
        if yag is not None and yag.smtp is not None:
            with contextlib.suppress(OSError):
                yag.smtp.close()
            yag.is_closed = True

    def send(self, message: bytes, *, mail_from: str, rcpt_to: str) -> SendResult:
        """Send ``message`` to ``rcpt_to`` over the open connection and classify the answer."""
        stage: Stage = "connect"
        if self._yag is None:
            try:
                self.open()
            except SendError as exc:
                if exc.fields.get("fatal"):
                    return SendResult("fatal", exc.fields.get("code"), exc.message)
                return connection_lost(exc.message, stage="connect")
        # Addresses are validated at import and in the account; this guards the command line.
        if _UNSAFE_ADDRESS.search(mail_from):
            return SendResult(
                "fatal",
                None,
                f"the sender address {mail_from!r} cannot go into an SMTP command: "
                "fix from_email / envelope_from in the sender account",
            )
        if _UNSAFE_ADDRESS.search(rcpt_to):
            return SendResult("failed", None, f"address not usable in SMTP: {rcpt_to!r}")
        smtp: smtplib.SMTP = self._yag.smtp
        try:
            smtp.ehlo_or_helo_if_needed()
            options = ""
            if not message.isascii() and smtp.has_extn("8bitmime"):
                options += " BODY=8BITMIME"
            utf8 = not (mail_from + rcpt_to).isascii()
            if utf8:
                options += " SMTPUTF8"
            commands = (
                f"MAIL FROM:<{mail_from}>{options}\r\n",
                f"RCPT TO:<{rcpt_to}>\r\n",
                "DATA\r\n",
            )
            encoding = "utf-8" if utf8 else "ascii"
            stages: tuple[Stage, ...] = ("mail", "rcpt", "data")
            if smtp.has_extn("pipelining"):
                # RFC 2920: MAIL, RCPT and DATA in one write, then their three answers: two
                # round trips a message instead of four, which is what a distant relay costs.
                stage = "mail"
                smtp.send("".join(commands).encode(encoding))
                replies = []
                for stage in stages:
                    code, reply = smtp.getreply()
                    replies.append((code, reply, stage))
                    if code == 421:  # the server is closing: no further answers will come
                        break
            else:
                replies = []
                for stage, command in zip(stages, commands, strict=True):
                    smtp.send(command.encode(encoding))
                    code, reply = smtp.getreply()
                    replies.append((code, reply, stage))
                    if not _go_ahead(code, stage):
                        break
            refused = _first_refusal(replies)
            if refused is not None:
                return self._refused(smtp, *refused, data_open=replies[-1][0] == 354)
            stage = "content"
            payload = _wire_format(message)
            if not payload.endswith(b"\r\n"):
                payload += b"\r\n"
            smtp.send(payload + b".\r\n")
            code, reply = smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            return connection_lost(str(exc) or type(exc).__name__, stage=stage)
        result = classify_smtp(code, reply, stage="data")
        if code == 421:
            self._drop()
        return result

    def _refused(
        self, smtp: smtplib.SMTP, code: int, reply: bytes, stage: Stage, *, data_open: bool
    ) -> SendResult:
        result = classify_smtp(code, reply, stage=stage)
        if code == 421:
            # RFC 5321 4.2.3: 421 means the server is closing the channel.
            self._drop()
            return result
        try:
            if data_open:
                # RFC 2920 3.1: a server may take DATA although every RCPT was refused; then
                # the client sends a lone dot (an empty message to nobody), never the content.
                smtp.send(b".\r\n")
                smtp.getreply()
            else:
                smtp.rset()
        except (smtplib.SMTPServerDisconnected, OSError):
            self._drop()
        return result

    def abort(self) -> None:
        """Close the connection without QUIT: a send was cut off mid-transaction.

        After half a DATA the server would take QUIT for more content and never answer.
        """
        self._drop()

    def close(self) -> None:
        """Say QUIT and close the connection."""
        yag, self._yag = self._yag, None
        if yag is not None:
            yag.close()


def _go_ahead(code: int, stage: Stage) -> bool:
    """Return whether ``code`` answering MAIL, RCPT or DATA lets the transaction go on."""
    if stage == "data":
        return code == 354
    return code == 250 or (stage == "rcpt" and code == 251)


def _first_refusal(replies: list[tuple[int, bytes, Stage]]) -> tuple[int, bytes, Stage] | None:
    """Return the first answer of MAIL, RCPT, DATA that is not a go-ahead, or None."""
    return next((r for r in replies if not _go_ahead(r[0], r[2])), None)


def _wire_format(message: bytes) -> bytes:
    """Return ``message`` with CRLF line ends and leading dots doubled (RFC 5321 4.5.2)."""
    # Both checks are plain bytes scans: the regexes cost ~60 us on a 4 KB message, a
    # fifth of the client's CPU per message, and built messages are CRLF already.
    if message.count(b"\n") != message.count(b"\r\n"):
        message = _BARE_LF.sub(b"\r\n", message)
    # "^." in multiline mode is a dot at the start or right after a newline.
    stuffed = message.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def _text(reply: Any) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)

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
have accepted the message, and resending silently could deliver it twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import smtplib
import ssl
from typing import Any

from ..exceptions import ConfigError, SendError
from . import SendResult, Stage, classify_smtp, connection_lost

log = logging.getLogger("bulkmail")

_BARE_LF = re.compile(rb"(?<!\r)\n")


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
        # always hand them a verifying one.
        context = ssl.create_default_context()
        if self.allow_self_signed:
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
        smtp: smtplib.SMTP = self._yag.smtp
        try:
            smtp.ehlo_or_helo_if_needed()
            options: list[str] = []
            if not message.isascii() and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if not (mail_from + rcpt_to).isascii():
                options.append("SMTPUTF8")
            stage = "mail"
            code, reply = smtp.mail(mail_from, options)
            if code != 250:
                return self._refused(smtp, code, reply, stage)
            stage = "rcpt"
            code, reply = smtp.rcpt(rcpt_to)
            if code not in (250, 251):
                return self._refused(smtp, code, reply, stage)
            stage = "data"
            smtp.putcmd("data")
            code, reply = smtp.getreply()
            if code != 354:
                return self._refused(smtp, code, reply, stage)
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

    def _refused(self, smtp: smtplib.SMTP, code: int, reply: bytes, stage: Stage) -> SendResult:
        result = classify_smtp(code, reply, stage=stage)
        if code == 421:
            # RFC 5321 4.2.3: 421 means the server is closing the channel.
            self._drop()
            return result
        try:
            smtp.rset()
        except (smtplib.SMTPServerDisconnected, OSError):
            self._drop()
        return result

    def close(self) -> None:
        """Say QUIT and close the connection."""
        yag, self._yag = self._yag, None
        if yag is not None:
            yag.close()


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

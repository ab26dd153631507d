"""A private Dovecot IMAP server for tests: the bounce mailbox and account checks log in to it."""

from __future__ import annotations

import email
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from process_support import stop


@dataclass
class Imap:
    port: int
    user: str
    password: str
    maildir: Path
    uid: int
    gid: int

    def deliver(self, data: bytes, name: str) -> None:
        """Drop a message into the maildir's new/ as a local delivery agent would."""
        new = self.maildir / "new"
        new.mkdir(parents=True, exist_ok=True)
        for sub in ("cur", "tmp"):
            (self.maildir / sub).mkdir(exist_ok=True)
        unique = f"{time.time_ns()}.{os.getpid()}_{name}.localhost"
        (self.maildir / "tmp" / unique).write_bytes(data)
        (self.maildir / "tmp" / unique).rename(new / unique)
        for path in [self.maildir.parent, *self.maildir.parent.rglob("*")]:
            os.chown(path, self.uid, self.gid)

    def messages(self) -> dict[str, set[str]]:
        """Return each message's Subject and its IMAP flags, read over IMAP."""
        conn = imaplib.IMAP4("127.0.0.1", self.port)
        conn.login(self.user, self.password)
        conn.select("INBOX", readonly=True)
        _, data = conn.uid("SEARCH", "ALL")
        found = {}
        for uid in data[0].split():
            _, parts = conn.uid("FETCH", uid, "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            flags = imaplib.ParseFlags(parts[0][0])
            subject = email.message_from_bytes(parts[0][1])["Subject"]
            found[f"{uid.decode()}:{subject}"] = {f.decode() for f in flags}
        conn.logout()
        return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dovecot(tmp_path: Path) -> Iterator[Imap]:
    """Start a private Dovecot (IMAP on a free loopback port, maildir in tmp_path)."""
    binary = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if binary is None:
        pytest.skip("dovecot is not installed: apt-get install -y dovecot-imapd")
    port = _free_port()
    # Dovecot's login and auth processes drop to unprivileged users when started as root:
    # their sockets and the password file must sit in a directory those users can enter.
    public = Path(tempfile.mkdtemp(prefix="bulkmail-dovecot-"))
    public.chmod(0o755)
    (public / "passwd").write_text("bounces:{PLAIN}s3cret-imap\n")
    (public / "passwd").chmod(0o644)
    mail = public / "mail"
    mail.mkdir()
    me = pwd.getpwuid(os.getuid())
    # Dovecot refuses to give mail access as uid 0: as root, the mail belongs to nobody.
    owner = pwd.getpwnam("nobody") if os.getuid() == 0 else me
    run_as = (
        ""
        if os.getuid() == 0
        else (
            f"default_internal_user = {me.pw_name}\ndefault_login_user = {me.pw_name}\n"
            f"default_internal_group = {me.pw_name}\n"
        )
    )
    conf = tmp_path / "dovecot.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            protocols = imap
            listen = 127.0.0.1
            base_dir = {public}/run
            state_dir = {tmp_path}/state
            log_path = {tmp_path}/dovecot.log
            ssl = no
            disable_plaintext_auth = no
            auth_mechanisms = plain
            mail_location = maildir:{mail}/%u
            first_valid_uid = 1
            first_valid_gid = 1
            service imap-login {{
              inet_listener imap {{
                address = 127.0.0.1
                port = {port}
              }}
              chroot =
            }}
            service anvil {{
              chroot =
            }}
            passdb {{
              driver = passwd-file
              args = scheme=PLAIN username_format=%u {public}/passwd
            }}
            userdb {{
              driver = static
              args = uid={owner.pw_uid} gid={owner.pw_gid} home={mail}/%u
            }}
            """
        )
        + run_as
    )
    proc = subprocess.Popen(
        [binary, "-F", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.communicate()[0].decode(errors="replace")
                log = (
                    (tmp_path / "dovecot.log").read_text()
                    if (tmp_path / "dovecot.log").exists()
                    else ""
                )
                pytest.fail(f"dovecot did not start: {out}\n{log}")
            time.sleep(0.05)
        yield Imap(port, "bounces", "s3cret-imap", mail / "bounces", owner.pw_uid, owner.pw_gid)
    finally:
        stop(proc, 10)
        shutil.rmtree(public, ignore_errors=True)

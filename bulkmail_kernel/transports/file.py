"""Dry run: write each message as an .eml file instead of sending it."""

from __future__ import annotations

import re
from pathlib import Path

from bulkmail_kernel.transports import SendResult

_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")


class FileTransport:
    """Write every message to ``folder`` as ``NNNNNN-recipient.eml``; nothing leaves the machine."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count = len(list(self.folder.glob("*.eml")))

    def send(self, message: bytes, *, mail_from: str, rcpt_to: str) -> SendResult:
        """Write ``message`` to a new file and report it sent."""
        self._count += 1
        path = self.folder / f"{self._count:06d}-{_UNSAFE.sub('_', rcpt_to)}.eml"
        # The envelope is not part of the message bytes: keep it where a reader expects it.
        path.write_bytes(
            f"X-Envelope-From: {mail_from}\r\nX-Envelope-To: {rcpt_to}\r\n".encode() + message
        )
        return SendResult("sent", 250, f"written to {path}", provider_message_id=path.name)

    def close(self) -> None:
        """Nothing to close."""

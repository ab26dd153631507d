"""Deliverability: DKIM signing and the bounce mailbox."""

"""The outbox: the one owner of messages, their bodies and events, and suppressions.

Every write to those tables goes through a module here: registration stores its
messages with :mod:`.queue`, the send loop claims and records with :mod:`.store`,
unsubscribes and bounces suppress through :mod:`.suppressions`. Everything else
asks. :mod:`.recovery` keeps the workers' rows and takes back what a dead one held;
:mod:`.lookup` answers which campaign and which sender account.
"""

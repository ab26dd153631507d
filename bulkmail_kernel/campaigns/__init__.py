"""Campaigns: create, register into the outbox, edit the queue, test sends, reports."""

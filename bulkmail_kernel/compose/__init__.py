"""Compose: templates rendered in a sandbox, MIME bytes, SMS text; pure, no database."""

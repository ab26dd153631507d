"""Local servers: the SMTP sink and the unsubscribe endpoint (their stacks load only when used)."""

"""labbridge.transport."""

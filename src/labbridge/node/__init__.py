"""labbridge.node."""

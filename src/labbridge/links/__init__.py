"""labbridge.links."""

"""labbridge.bus."""

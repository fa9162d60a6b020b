"""labbridge.devices."""

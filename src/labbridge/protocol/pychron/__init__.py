"""labbridge.protocol.pychron."""

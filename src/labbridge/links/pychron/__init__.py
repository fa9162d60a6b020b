"""labbridge.links.pychron."""

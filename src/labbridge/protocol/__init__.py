"""Sans-I/O protocol cores: bytes in, typed messages out, and back.

Nothing in this package may import asyncio, socket, zmq or any other I/O module
(checked by import-linter, see pyproject.toml).
"""

"""asyncio transports: TCP/UDP servers, reconnecting clients, a blocking facade for scripts,
and an in-memory pipe for tests. Imports protocol code only; no device knowledge."""

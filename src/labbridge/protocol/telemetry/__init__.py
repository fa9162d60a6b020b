"""Sans-I/O telemetry: the bus envelope, the legacy single-string forms, gap detection, and
the dashboard model (spec pychron.md §13-14, ARCHITECTURE.md principle 10)."""

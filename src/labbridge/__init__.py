"""labbridge: one device model, many wire faces.

Drive lab instruments that sit on one computer from an experiment that runs on another:
Pychron-style command servers, PyMoDAQ remote modules, Moog-style packed C structs, and a
ZeroMQ telemetry bus, with simulated instruments for every family.
"""

__version__ = "0.1.0"

"""Device and service kinds of the Pychron family (valves, flags, gauges, command server)."""

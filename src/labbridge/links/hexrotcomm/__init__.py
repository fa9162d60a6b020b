"""Hexapod/rotator controller link (ts_hexrotcomm family), both generations, both roles.

* :mod:`.client`: generation D, CSC side (one socket, command acknowledgements).
* :mod:`.server_a`: generation A, CSC side (two one-client servers, no feedback).
* :mod:`.mock_server`: the socket side of the mock controllers (gen D server, gen A client).
* :mod:`.controller`: the client-side controller model, a labbridge Device.
"""

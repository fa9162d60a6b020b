"""EPICS face: the devices of a node as process variables of a real IOC (issue 18).

* :mod:`.mapping` says which records a device gets (names, record types, EPICS fields), how a
  device :class:`~labbridge.devices.base.Change` becomes record values and which device method
  a write calls. It imports no EPICS code, so it is tested without an IOC.
* :mod:`.ioc` embeds pythonSoftIOC (EPICS base from ``epicscorelibs``) in the node process and
  serves those records over Channel Access and pvAccess with EPICS's own servers; the camera
  frame is an NTNDArray served by p4p's pvxs server. ADRs 0150-0153 say how the IOC's threads
  meet labbridge's event loop and how a refused write looks to an EPICS client.

The face adds no device logic: every write calls the same device method another link calls.
"""

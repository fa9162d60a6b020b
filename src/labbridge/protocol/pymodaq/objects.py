"""PyMoDAQ data objects as plain frozen dataclasses (spec pymodaq.md §5.1 to §5.3).

These mirror what the real ``pymodaq_data`` classes put on the wire, field for field and in wire
order, without their behaviour (no units algebra, no Qt). ``cls_name`` is the type tag that
travels (``DataActuator``, ``DataFromPlugins``, ``DataRaw``, ``NavAxis``…), so a decoded object
re-encodes to the same bytes.

Arrays are ``numpy.ndarray`` fields; equality of these dataclasses is identity (``eq=False``):
compare arrays with ``numpy.array_equal``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

#: Class names of the DataWithAxes family that a G3 decoder accepts (§5.1).
DWA_CLASSES: Final = frozenset(
    {"DataWithAxes", "DataRaw", "DataCalculated", "DataFromRoi", "DataActuator",
     "DataFromPlugins"})
#: Class names of the DataToExport family (§5.1).
DTE_CLASSES: Final = frozenset({"DataToExport", "DataScan", "DataToActuators"})
#: Class names encoded as an Axis (§5.1).
AXIS_CLASSES: Final = frozenset({"Axis", "NavAxis"})

_DIMS = {0: "Data0D", 1: "Data1D", 2: "Data2D"}


@dataclass(frozen=True, slots=True, eq=False)
class Axis:
    """``Axis`` body: label, units, data, index, spread_order (§5.1)."""

    label: str = ""
    units: str = ""
    data: np.ndarray | None = None
    index: int = 0
    spread_order: int = 0
    cls_name: str = "Axis"


@dataclass(frozen=True, slots=True, eq=False)
class DataWithAxes:
    """A DataWithAxes-family object, fields in wire order (§5.2).

    ``extra`` keeps the extra attributes in order as ``(name, value)`` pairs;
    ``DataFromPlugins`` always carries ``do_plot`` and ``do_save``.
    """

    cls_name: str
    name: str
    data: tuple[np.ndarray, ...]
    timestamp: float = field(default_factory=time.time)
    source: str = "raw"
    dim: str = "Data0D"
    distribution: str = "uniform"
    units: str = ""
    labels: tuple[str, ...] = ()
    origin: str = ""
    nav_indexes: tuple[int, ...] = ()
    axes: tuple[Axis, ...] = ()
    errors: tuple[np.ndarray, ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def value(self) -> float:
        """First element of the first channel as a float (an actuator's position)."""
        if not self.data or self.data[0].size == 0:
            raise ValueError(f"{self.cls_name} {self.name!r} holds no value")
        return float(self.data[0].reshape(-1)[0].real)


@dataclass(frozen=True, slots=True, eq=False)
class DataToExport:
    """A DataToExport-family object (§5.3): a named list of DataWithAxes."""

    name: str
    data: tuple[DataWithAxes, ...]
    timestamp: float = field(default_factory=time.time)
    extra: tuple[tuple[str, Any], ...] = ()
    cls_name: str = "DataToExport"

    def arrays(self) -> tuple[np.ndarray, ...]:
        """Every channel of every contained DataWithAxes, in order."""
        return tuple(a for dwa in self.data for a in dwa.data)


@dataclass(frozen=True, slots=True)
class ParameterWithPath:
    """``ParameterWithPath`` body: path, then the parameter XML (§5.1, LECO only)."""

    path: tuple[str, ...]
    xml: str | bytes


def default_labels(n: int) -> tuple[str, ...]:
    return tuple(f"CH{i:02d}" for i in range(n))


def dim_for(a: np.ndarray) -> str:
    """``Data0D`` / ``Data1D`` / ``Data2D`` / ``DataND`` from an array's shape."""
    nd = 0 if a.size == 1 else a.ndim
    return _DIMS.get(nd, "DataND")


def data_actuator(value: float, *, units: str = "", name: str = "actuator",
                  timestamp: float | None = None) -> DataWithAxes:
    """A ``DataActuator`` holding one position, as real G3 actuators send it (§5.2 example)."""
    return DataWithAxes(
        cls_name="DataActuator", name=name, data=(np.array([float(value)]),),
        timestamp=time.time() if timestamp is None else timestamp, dim="Data0D", units=units,
        labels=("CH00",))


def data_from_plugins(name: str, arrays: list[np.ndarray] | tuple[np.ndarray, ...], *,
                      units: str = "", origin: str = "", timestamp: float | None = None,
                      axes: tuple[Axis, ...] = ()) -> DataWithAxes:
    """A ``DataFromPlugins`` as a real detector sends it (extras ``do_plot``, ``do_save``)."""
    arrs = tuple(np.asarray(a) for a in arrays)
    if not arrs:
        raise ValueError("a DataFromPlugins needs at least one array")
    return DataWithAxes(
        cls_name="DataFromPlugins", name=name, data=arrs,
        timestamp=time.time() if timestamp is None else timestamp, dim=dim_for(arrs[0]),
        units=units, labels=default_labels(len(arrs)), origin=origin, axes=axes,
        extra=(("do_plot", True), ("do_save", True)))


def data_to_export(name: str, items: list[DataWithAxes] | tuple[DataWithAxes, ...], *,
                   timestamp: float | None = None) -> DataToExport:
    """A DataToExport; like the real class it sets each item's ``origin`` to its own name."""
    from dataclasses import replace

    return DataToExport(name=name, data=tuple(replace(d, origin=name) for d in items),
                        timestamp=time.time() if timestamp is None else timestamp)

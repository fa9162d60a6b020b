"""TAI time for the hexapod/rotator headers (spec hexrotcomm.md §3.7, §11).

The header's ``tai_sec``/``tai_nsec`` carry TAI seconds since the Unix epoch: the C header says
so (``lsst-ts/ts_hexrotpxicom@v0.2.6: include/interface/commandStructure.h``, "TAI
(International Atomic Time) time in second"), the real controller reads ``CLOCK_TAI``
(``src/utility.c``), and the upstream mocks write ``lsst.ts.utils.current_tai()``
(``lsst-ts/ts_hexrotcomm@v1.3.7: python/lsst/ts/hexrotcomm/base_mock_controller.py``
``update_and_get_header``; ``@v0.22.0: command_telemetry_client.py`` for generation A).

TAI - UTC comes from the table of leap seconds below (IERS, ``leap-seconds.list``; the last
entry is from IERS Bulletin C 52, 2016-07-06: TAI - UTC = 37 s from 2017-01-01, unchanged since).
Times before 1972 get 10 s (the first value of the table); no astronomy library is needed for a
single integer offset. When IERS announces a new leap second, add a row.

"Unix seconds" here are POSIX ``time.time()`` values, which ignore leap seconds, so the offset
is a plain addition.
"""

from __future__ import annotations

import bisect
import time

#: (UTC Unix time at which the offset starts, TAI - UTC in seconds from then on).
LEAP_SECONDS: tuple[tuple[int, int], ...] = (
    (63072000, 10),    # 1972-01-01
    (78796800, 11),    # 1972-07-01
    (94694400, 12),    # 1973-01-01
    (126230400, 13),   # 1974-01-01
    (157766400, 14),   # 1975-01-01
    (189302400, 15),   # 1976-01-01
    (220924800, 16),   # 1977-01-01
    (252460800, 17),   # 1978-01-01
    (283996800, 18),   # 1979-01-01
    (315532800, 19),   # 1980-01-01
    (362793600, 20),   # 1981-07-01
    (394329600, 21),   # 1982-07-01
    (425865600, 22),   # 1983-07-01
    (489024000, 23),   # 1985-07-01
    (567993600, 24),   # 1988-01-01
    (631152000, 25),   # 1990-01-01
    (662688000, 26),   # 1991-01-01
    (709948800, 27),   # 1992-07-01
    (741484800, 28),   # 1993-07-01
    (773020800, 29),   # 1994-07-01
    (820454400, 30),   # 1996-01-01
    (867715200, 31),   # 1997-07-01
    (915148800, 32),   # 1999-01-01
    (1136073600, 33),  # 2006-01-01
    (1230768000, 34),  # 2009-01-01
    (1341100800, 35),  # 2012-07-01
    (1435708800, 36),  # 2015-07-01
    (1483228800, 37),  # 2017-01-01
)
_STARTS = [s for s, _ in LEAP_SECONDS]


def tai_minus_utc(utc: float) -> int:
    """TAI - UTC (s) at the UTC Unix time ``utc``."""
    i = bisect.bisect_right(_STARTS, utc) - 1
    return LEAP_SECONDS[max(i, 0)][1]


def tai_from_utc(utc: float) -> float:
    """TAI Unix seconds for UTC Unix seconds."""
    return utc + tai_minus_utc(utc)


def utc_from_tai(tai: float) -> float:
    """UTC Unix seconds for TAI Unix seconds (the inverse of :func:`tai_from_utc`)."""
    utc = tai - tai_minus_utc(tai)
    # Near a leap second the first guess may use the next offset: correct it once.
    return tai - tai_minus_utc(utc)


#: [start, end) of UTC Unix seconds over which the last offset looked up holds, and the offset.
_SPAN: list[float] = [0.0, -1.0, 0.0]


def current_tai() -> float:
    """The current time as TAI Unix seconds (what the controller writes in headers).

    Called for every frame a controller writes: the offset found last is kept with the span
    of time it holds for (until the next leap second in the table), so most calls do no
    look-up.
    """
    utc = time.time()
    span = _SPAN
    if span[0] <= utc < span[1]:
        return utc + span[2]
    i = bisect.bisect_right(_STARTS, utc) - 1
    span[0] = _STARTS[i] if i >= 0 else float("-inf")
    span[1] = _STARTS[i + 1] if i + 1 < len(_STARTS) else float("inf")
    span[2] = LEAP_SECONDS[max(i, 0)][1]
    return utc + span[2]

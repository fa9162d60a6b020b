"""The demo's extraction sequence, written as a user would write a script (``main(lab)``):
pump, isolate, heat the sample, expand the gas to the spectrometer, measure, pump out."""

from __future__ import annotations

from labbridge.node.lab import Lab


async def extraction(lab: Lab, *, temperature: float = 600.0) -> None:
    line = lab.line
    # Pump: rough the line and open the getter.
    await line.close("E")
    await line.open("F")
    await line.open("D")
    await line.wait_for(lambda: line.is_open("F"), timeout=5, what="roughing valve open")
    await lab.sleep(0.2)
    # Isolate the sample volume.
    await line.close("F")
    await line.close("A")
    # Heat the sample.
    if lab.furnace is not None:
        await lab.furnace.set_setpoint(temperature)
        await lab.furnace.wait_for_temperature(temperature, tolerance=2.0, timeout=60)
    # Expand the released gas towards the spectrometer.
    await line.open("A")
    await lab.sleep(0.2)
    await line.close("A")
    await line.open("E")
    # Measure.
    if lab.spectrometer is not None:
        await lab.spectrometer.measure(cycles=3)
    # Pump out, cool down.
    await line.close("E")
    await line.open("F")
    if lab.furnace is not None:
        await lab.furnace.set_setpoint(22.0)
    await line.close("F")

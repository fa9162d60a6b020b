"""An extraction-line script: ``labbridge run examples/scripts/open-close.py --lab ACQ.yaml``.

``main(lab)`` may be async (as here) or a plain function (then every call blocks).
"""


async def main(lab):
    line = lab.line
    await line.close("A")
    await line.open("B")
    await line.wait_for(lambda: line.is_open("B"), timeout=5, what="B open")
    await lab.sleep(1)
    await line.close("B")

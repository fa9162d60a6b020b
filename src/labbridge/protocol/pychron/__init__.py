"""Sans-I/O core of the Pychron protocol family (spec pychron.md).

* :mod:`.braced` -- F-SEED ``{LLLL}payload\\r\\n`` framing (persistent connections).
* :mod:`.raw` -- F-RAW one-shot text/JSON requests, framing auto-detection.
* :mod:`.relay` -- legacy repeater/processor frames (F-RELAY requests, F-CRC replies).
* :mod:`.messages` -- request grammar, reply vocabulary, error codes.
* :mod:`.words` -- valve state/lock/owner words.
* :mod:`.crc` -- CRC16 suffix and CRC32 state checksum.
"""

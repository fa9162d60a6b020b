"""Sans-I/O codecs of PyMoDAQ's TCP/IP remote-module protocol (spec pymodaq.md).

* :mod:`.g1`: the seed generation (PyMoDAQ 1.6 to 3.6), dialects G1a ("1.6") and G1b ("2.1").
* :mod:`.g3`: the type-tagged objects of PyMoDAQ 5.0 to 5.1, with :mod:`.objects`.
* :mod:`.codec`: G3 message grouping, generation detection, :func:`.codec.make_codec`.
* :mod:`.messages`: typed messages shared by both generations.
"""

from labbridge.protocol.pymodaq.codec import Codec, G3Codec, detect_generation, make_codec
from labbridge.protocol.pymodaq.g1 import G1Codec
from labbridge.protocol.pymodaq.g3 import G3Framer, decode_object, encode_message
from labbridge.protocol.pymodaq.messages import ClientType, Dialect, Generation, Role

__all__ = [
    "ClientType",
    "Codec",
    "Dialect",
    "G1Codec",
    "G3Codec",
    "G3Framer",
    "Generation",
    "Role",
    "decode_object",
    "detect_generation",
    "encode_message",
    "make_codec",
]

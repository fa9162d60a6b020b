"""CRC16 suffixes, the CRC32 state checksum and the valve words, against the vectors."""

from __future__ import annotations

import pytest

from labbridge.protocol.pychron.crc import (
    ChecksumMismatch,
    checksums_equal,
    crc16,
    crc16_suffix,
    split_crc16,
    state_checksum,
)
from labbridge.protocol.pychron.words import (
    WordError,
    checksum_keys,
    owners_word,
    parse_owners_word,
    parse_state_word,
    state_word,
    version1_word,
)
from tests.conftest import load_vectors

V = load_vectors("pychron.json")


@pytest.mark.parametrize("case", V["crc16"]["cases"], ids=lambda c: c["input"][:20] or "empty")
def test_crc16_vectors(case):
    assert crc16(case["input"].encode()) == int(case["crc_register"], 16)
    assert crc16_suffix(case["input"]) == case["crc16"]


def test_crc16_non_ascii_masks_code_points_like_pychron():
    for case in V["crc16"]["non_ascii"]:
        assert crc16_suffix(case["input"]) == case["crc16_pychron_computeCRC"]


def state_str(sw):
    prefix = {"valve": "VALVE", "switch": "SWITCH", "manual": "MANUAL_SWITCH"}[sw["kind"]]
    if sw["kind"] == "manual":
        return f"{prefix}-{sw['name']}{sw['state']}"
    return f"{prefix}-{sw['name']}{sw['state']}{sw['software_lock']}"


@pytest.mark.parametrize("case", V["state_checksum"]["cases"], ids=lambda c: c["name"])
def test_state_checksum_vectors(case):
    by_name = {sw["name"]: sw for sw in case["switches"]}
    parts = [state_str(by_name[k]) for k in case["keys"] if k in by_name]
    assert "".join(parts) == case["concatenated"]
    assert state_checksum(parts) == case["crc32"]
    assert str(state_checksum(parts)) == case["reply"]
    if "python2_signed_crc32" in case:
        assert checksums_equal(case["crc32"], case["python2_signed_crc32"])
        assert not checksums_equal(case["crc32"], case["python2_signed_crc32"] + 1)


@pytest.mark.parametrize("case", V["words"]["state_and_lock_words"],
                         ids=lambda c: f"{c['command']}-{c['body'][:12]}")
def test_state_words(case):
    flags = [(p[:-1], p[-1] == "1") for p in case["body"].split(",")]
    assert state_word(flags) == case["reply"]
    assert parse_state_word(case["reply"]) == dict(flags)


@pytest.mark.parametrize("case", V["words"]["owners"], ids=lambda c: c["description"])
def test_owner_words(case):
    owners = list(case["owners"].items())
    assert owners_word(owners) == case["reply"]
    assert parse_owners_word(case["reply"]) == case["owners"]
    if "docstring_reply" in case:
        assert parse_owners_word(case["docstring_reply"]) == case["owners"]


def test_version1_word_as_the_real_server_emits_it():
    case = V["words"]["state_word_version1_as_emitted"]
    assert version1_word([("A", False), ("B", True), ("C", False)]) == case["reply"]


def test_parse_bits_and_packed_forms():
    assert parse_state_word("A,B,C|5", check_crc=False) == {"A": True, "B": False, "C": True}
    assert parse_state_word("A,<EA>,C:3", check_crc=False) == {"A": False, "EA": True,
                                                                "C": True}
    assert parse_state_word("A0B1C0", check_crc=False) == {"A": False, "B": True, "C": False}
    with pytest.raises(WordError):
        parse_state_word("A0,B2", check_crc=False)


def test_bad_crc_is_refused():
    with pytest.raises(ChecksumMismatch):
        parse_state_word("A0,B1,C03447")
    with pytest.raises(ChecksumMismatch):
        split_crc16("OK")


def test_checksum_keys():
    known = ["A", "B", "V1"]
    assert checksum_keys("A,B", known) == ["A", "B"]
    assert checksum_keys("AB", known) == ["A", "B"]  # real: iterated per character
    assert checksum_keys("V1", known) == ["V1"]      # a registered multi-char key stays whole
    assert checksum_keys("", known) == []

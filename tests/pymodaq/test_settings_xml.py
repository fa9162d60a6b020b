"""Settings XML in the real format (issue 14 item 1): documents written by the real writer
(tests/pymodaq/real_settings_xml.py, sources cited there) are read with their values, ours are
byte-identical to what that writer produces for the same tree, the old ``value=`` form is still
read (flagged legacy), and hostile documents are refused."""

from __future__ import annotations

import pytest

from labbridge.protocol.pymodaq.settings_xml import (
    DETECTOR_ROOT,
    MAX_XML,
    SettingsXmlError,
    parameter_to_xml,
    parse_settings,
    parse_value,
    settings_to_xml,
)
from tests.pymodaq import real_settings_xml as real


def test_real_actuator_infos_values():
    parsed = parse_settings(real.INFOS_ACTUATOR)
    assert not parsed.legacy
    assert parsed.root.name == "move_settings" and parsed.root.title == "Actuator Settings:"
    assert parsed.values() == {
        "multiaxes/ismultiaxes": False, "multiaxes/multi_status": "Master",
        "multiaxes/axis": None, "units": "mm", "epsilon": 0.01, "timeout": 20,
        "bounds/is_bounds": False, "bounds/min_bound": 0.0, "bounds/max_bound": 1.0,
        "scaling/use_scaling": False, "scaling/scaling": 1.0, "scaling/offset": 0.0}
    units = parsed.root.children[1]
    assert (units.name, units.type, units.title, units.attrs["readonly"]) == (
        "units", "str", "Units:", "1")


def test_real_grabber_infos_values():
    values = parse_settings(real.INFOS_GRABBER).values()
    assert values == {"exposure_ms": 10.0, "units": "counts", "show": True, "comment": "",
                      "name": 'a<b & "c"'}


@pytest.mark.parametrize("xml,want", [
    (real.INFO_XML_EPSILON, {"epsilon": 0.05}),
    (real.INFO_XML_IS_BOUNDS, {"is_bounds": True}),
    (real.SET_INFO_EPSILON, {"epsilon": 0.5}),
    (real.SET_INFO_MAX_BOUND, {"max_bound": 25.0}),
])
def test_real_single_parameter_documents(xml, want):
    assert parse_settings(xml).values() == want
    assert parse_settings(xml.decode()).values() == want  # str or bytes, as peers send either


def test_our_writer_is_byte_identical_to_the_real_writer():
    assert settings_to_xml({"units": "mm", "home": 0.0}).encode() == real.WRITER_STAGE
    assert settings_to_xml({"exposure_ms": 10.0, "units": "counts"},
                           root=DETECTOR_ROOT).encode() == real.WRITER_CAMERA
    assert settings_to_xml({"flag": True, "count": 3, "note": "", "label": "µm <5>",
                            "grp": {"x": 1.5}}).encode() == real.WRITER_MIXED
    assert parameter_to_xml("home", 1.5).encode() == real.WRITER_PARAM_HOME
    assert parameter_to_xml("exposure_ms", 42.0).encode() == real.WRITER_PARAM_EXPOSURE


def test_round_trip_of_our_documents():
    tree = {"flag": True, "count": 3, "note": "", "label": "µm <5>", "grp": {"x": 1.5}}
    assert parse_settings(settings_to_xml(tree)).values() == {
        "flag": True, "count": 3, "note": "", "label": "µm <5>", "grp/x": 1.5}


def test_old_value_attribute_form_is_still_read_and_flagged():
    parsed = parse_settings(real.OLD_LABBRIDGE_INFOS)
    assert parsed.legacy
    assert parsed.values() == {"units": "mm", "home": 0.0}
    single = parse_settings("<exposure_ms title='exposure_ms' type='float' value='3'/>")
    assert single.legacy and single.values() == {"exposure_ms": 3.0}


@pytest.mark.parametrize("ptype,text,want", [
    ("list", "str('Master')", "Master"), ("list", "int(3)", 3), ("list", "float(1.5)", 1.5),
    ("list", "['a', 1]", ["a", 1]), ("list", "__import__('os').system('x')",
                                     "__import__('os').system('x')"),
    ("int", "2.0", 2), ("bool_push", "1", True), ("led", "0", False), ("bool", "yes", "yes"),
    ("float", "nan?", "nan?"), ("str", None, ""), ("float", None, None),
    ("date_time", "1700000000000", "1700000000000"),
])
def test_value_texts_are_typed_without_eval(ptype, text, want):
    assert parse_value(ptype, text) == want


@pytest.mark.parametrize("xml", [
    b"<settings><a type='str'>x</a>",  # malformed
    b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x "xxxxxxxx">]><s>&x;&x;</s>',  # DTD
    b"<a>" * 40 + b"</a>" * 40,  # too deep
    b"<s>" + b"<a type='str'>x</a>" * 10_001 + b"</s>",  # too many elements
    b"<s>" + b" " * MAX_XML + b"</s>",  # too large
])
def test_hostile_documents_are_refused(xml):
    with pytest.raises(SettingsXmlError):
        parse_settings(xml)

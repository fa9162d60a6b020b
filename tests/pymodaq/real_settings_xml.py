"""Settings documents as the real PyMoDAQ writer produces them (issue 14 item 1; spec §13).

Source of the format: pymodaq_gui ``parameter/ioxml.py`` (``walk_parameters_to_xml``,
``dict_from_param``, ``add_text_to_elt``; reader ``walk_xml_to_parameter``,
``set_txt_from_elt``) at release 5.1.12, the series that shipped with PyMoDAQ 5.0/5.1 (the last
releases with the TCP/IP modules); the same writing rules are in the repository
PyMoDAQ/pymodaq_gui at 61488120 (branch 5.0.x_dev; the stored snapshot carries no tags) and in
PyMoDAQ/PyMoDAQ@580111f6 ``src/pymodaq_gui/parameter/ioxml.py``.

The parameter trees are those of PyMoDAQ@5.0.0:
``src/pymodaq/control_modules/move_utility_classes.py`` (``comon_parameters_fun``: multiaxes,
units, epsilon, timeout, bounds, scaling) and ``src/pymodaq/utils/tcp_ip/tcp_server_client.py``
(``TCPClient.post_init`` sends ``parameter_to_xml_string(self.settings)``, a copy of the
module's ``move_settings`` / ``detector_settings`` group; ``send_info`` sends the changed
parameter alone with ``path = settings.childPath(param)``; the server's ``commit_settings``
sends ``set_info`` with ``get_param_path(param)[2:]``). Each document below is that writer's
output for those trees, transcribed byte for byte (the writer was run once, outside this
repository, with pymodaq_gui 5.1.12, pyqtgraph 0.13.7 and PyQt5 offscreen).
"""

#: ``Infos`` from a real remote DAQ_Move (ACTUATOR) whose plugin works in mm.
INFOS_ACTUATOR = (
    b'<move_settings type="group" title="Actuator Settings:" visible="1" removable="0" '
    b'readonly="0"><multiaxes type="group" title="MultiAxes:" visible="0" removable="0" '
    b'readonly="0"><ismultiaxes type="bool" title="is Multiaxes:" visible="1" removable="0" '
    b'readonly="0">0</ismultiaxes><multi_status type="list" title="Status:" visible="1" '
    b'removable="0" readonly="0" limits="[\'Master\', \'Slave\']">str(\'Master\')</multi_status>'
    b'<axis type="list" title="Axis:" visible="1" removable="0" readonly="0" '
    b'limits="[\'X\']" /></multiaxes><units type="str" title="Units:" visible="1" '
    b'removable="0" readonly="1">mm</units><epsilon type="float" title="Epsilon:" visible="1" '
    b'removable="0" readonly="0">0.01</epsilon><timeout type="int" title="Timeout (s):" '
    b'visible="1" removable="0" readonly="0">20</timeout><bounds type="group" '
    b'title="Bounds:" visible="1" removable="0" readonly="0"><is_bounds type="bool" '
    b'title="Set Bounds:" visible="1" removable="0" readonly="0">0</is_bounds><min_bound '
    b'type="float" title="Min:" visible="1" removable="0" readonly="0">0</min_bound>'
    b'<max_bound type="float" title="Max:" visible="1" removable="0" readonly="0">1'
    b'</max_bound></bounds><scaling type="group" title="Scaling:" visible="1" removable="0" '
    b'readonly="0"><use_scaling type="bool" title="Use scaling:" visible="1" removable="0" '
    b'readonly="0">0</use_scaling><scaling type="float" title="Scaling factor:" visible="1" '
    b'removable="0" readonly="0">1.0</scaling><offset type="float" title="Offset factor:" '
    b'visible="1" removable="0" readonly="0">0.0</offset></scaling></move_settings>')

#: ``Infos`` from a real remote DAQ_Viewer (GRABBER) with a few detector settings: a float,
#: a str, a bool, an empty str (self-closing) and characters that need escaping.
INFOS_GRABBER = (
    b'<detector_settings type="group" title="Detector Settings" visible="1" removable="0" '
    b'readonly="0"><exposure_ms type="float" title="Exposure (ms):" visible="1" removable="0" '
    b'readonly="0">10.0</exposure_ms><units type="str" title="Units:" visible="1" '
    b'removable="0" readonly="0">counts</units><show type="bool" title="Show:" visible="1" '
    b'removable="0" readonly="0">1</show><comment type="str" title="Comment:" visible="1" '
    b'removable="0" readonly="0" /><name type="str" title="Name:" visible="1" removable="0" '
    b'readonly="0">a&lt;b &amp; "c"</name></detector_settings>')

#: ``Info_xml`` from the real client when ``epsilon`` changes to 0.05 (path =
#: ``settings.childPath(param)`` in the DAQ_Move settings, XML of the parameter alone).
INFO_XML_EPSILON_PATH = ["move_settings", "epsilon"]
INFO_XML_EPSILON = (b'<epsilon type="float" title="Epsilon:" visible="1" removable="0" '
                    b'readonly="0">0.05</epsilon>')
#: ... and for a parameter inside a group (bounds enabled).
INFO_XML_IS_BOUNDS_PATH = ["move_settings", "bounds", "is_bounds"]
INFO_XML_IS_BOUNDS = (b'<is_bounds type="bool" title="Set Bounds:" visible="1" removable="0" '
                      b'readonly="0">1</is_bounds>')

#: ``set_info`` from a real main computer (DAQ_Move_TCP_server.commit_settings) after its
#: user set epsilon to 0.5 and the max bound to 25 in the client's settings it shows (the
#: settings it restored from INFOS_ACTUATOR carry ``show_pb``, so the writer adds it).
SET_INFO_EPSILON_PATH = ["epsilon"]
SET_INFO_EPSILON = (b'<epsilon type="float" title="Epsilon:" visible="1" removable="0" '
                    b'readonly="0" show_pb="0">0.5</epsilon>')
SET_INFO_MAX_BOUND_PATH = ["bounds", "max_bound"]
SET_INFO_MAX_BOUND = (b'<max_bound type="float" title="Max:" visible="1" removable="0" '
                      b'readonly="0" show_pb="0">25.0</max_bound>')

#: What the real reader (XML_string_to_parameter) made of labbridge's old value= documents:
#: ``units`` read as '' and ``home`` with no value at all (issue 14 item 1).
OLD_LABBRIDGE_INFOS = (b'<settings title="settings" type="group"><units title="units" '
                       b'type="str" value="mm"/><home title="home" type="float" '
                       b'value="0.0"/></settings>')

#: The real writer's output for the trees labbridge's devices export (same writer run; titles
#: equal to the names, as labbridge writes them): the simulated stage, the camera, a tree with
#: every value type labbridge writes (bool, int, empty str, non-ASCII and markup, a group).
WRITER_STAGE = (
    b'<move_settings type="group" title="Actuator Settings:" visible="1" removable="0" '
    b'readonly="0"><units type="str" title="units" visible="1" removable="0" readonly="0">mm'
    b'</units><home type="float" title="home" visible="1" removable="0" readonly="0">0.0'
    b'</home></move_settings>')
WRITER_CAMERA = (
    b'<detector_settings type="group" title="Detector Settings" visible="1" removable="0" '
    b'readonly="0"><exposure_ms type="float" title="exposure_ms" visible="1" removable="0" '
    b'readonly="0">10.0</exposure_ms><units type="str" title="units" visible="1" '
    b'removable="0" readonly="0">counts</units></detector_settings>')
WRITER_MIXED = (
    b'<move_settings type="group" title="Actuator Settings:" visible="1" removable="0" '
    b'readonly="0"><flag type="bool" title="flag" visible="1" removable="0" readonly="0">1'
    b'</flag><count type="int" title="count" visible="1" removable="0" readonly="0">3</count>'
    b'<note type="str" title="note" visible="1" removable="0" readonly="0" /><label '
    b'type="str" title="label" visible="1" removable="0" readonly="0">&#181;m &lt;5&gt;'
    b'</label><grp type="group" title="grp" visible="1" removable="0" readonly="0"><x '
    b'type="float" title="x" visible="1" removable="0" readonly="0">1.5</x></grp>'
    b'</move_settings>')
WRITER_PARAM_HOME = (b'<home type="float" title="home" visible="1" removable="0" '
                     b'readonly="0">1.5</home>')
WRITER_PARAM_EXPOSURE = (b'<exposure_ms type="float" title="exposure_ms" visible="1" '
                         b'removable="0" readonly="0">42.0</exposure_ms>')

#: ``set_info`` a real main computer sends to a labbridge client after restoring the client's
#: settings from WRITER_STAGE / WRITER_CAMERA and its user changing one value there (same
#: writer run: ``get_param_path(param)[2:]`` and ``parameter_to_xml_string(param)``; the real
#: reader gave units 'mm' and home 0.0 / units 'counts' and exposure_ms 10.0 from our Infos).
SET_INFO_HOME_PATH = ["home"]
SET_INFO_HOME = (b'<home type="float" title="home" visible="1" removable="0" readonly="0" '
                 b'show_pb="0">1.5</home>')
SET_INFO_EXPOSURE_PATH = ["exposure_ms"]
SET_INFO_EXPOSURE = (b'<exposure_ms type="float" title="exposure_ms" visible="1" removable="0" '
                     b'readonly="0" show_pb="0">42.0</exposure_ms>')

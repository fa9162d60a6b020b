"""Configuration sections that remember where they came from.

Every value read from a node file keeps its file and line, so a bad value is reported as
``valve-controller.yaml:12: devices[0].valves[3].name: expected a string, got 12`` instead of
a stack trace. Factories for devices and services read their settings through
:class:`Section`'s typed getters; nothing else in labbridge parses configuration by hand.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

_MISSING: Any = object()


class ConfigError(Exception):
    """A configuration value is missing or wrong; says which file, line and field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        where = file or "<config>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}")


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader whose mappings and sequences carry their line numbers."""


class _Map(dict):  # type: ignore[type-arg]
    lines: dict[str, int]
    line: int


class _Seq(list):  # type: ignore[type-arg]
    lines: list[int]
    line: int


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.lines = {}
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool):
            raise ConfigError("mapping keys must be plain scalars",
                              file=node.start_mark.name, line=key_node.start_mark.line + 1)
        skey = str(key)
        if skey in out:
            raise ConfigError(f"duplicate key {skey!r}", file=node.start_mark.name,
                              line=key_node.start_mark.line + 1, field=skey)
        out[skey] = loader.construct_object(value_node, deep=True)
        out.lines[skey] = value_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.lines = [child.start_mark.line + 1 for child in node.value]
    out.line = node.start_mark.line + 1
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file, keeping line numbers; syntax errors become :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=str(p)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not UTF-8 text", file=str(p)) from exc
    return parse_yaml(text, str(p))


def parse_yaml(text: str, name: str = "<string>") -> Any:
    try:
        loader = _LineLoader(text)
        loader.name = name
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"YAML syntax error: {exc.problem}", file=name,
                          line=(mark.line + 1) if mark else None) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=name) from exc


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{value!r}".lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class Section(Mapping[str, Any]):
    """A mapping from a config file, with typed getters that report file, line and field."""

    def __init__(self, data: Mapping[str, Any], *, file: str | None = None, path: str = "",
                 line: int | None = None) -> None:
        self._data = dict(data)
        self._lines: dict[str, int] = dict(getattr(data, "lines", {}) or {})
        self.file = file
        self.path = path
        self.line = line if line is not None else getattr(data, "line", None)
        self._used: set[str] = set()

    # Mapping protocol ------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def raw(self) -> dict[str, Any]:
        return dict(self._data)

    # Locations ---------------------------------------------------------------------------------
    def field_name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: str) -> int | None:
        return self._lines.get(key, self.line)

    def error(self, key: str | None, message: str) -> ConfigError:
        if key is None:
            return ConfigError(message, file=self.file, line=self.line, field=self.path or None)
        return ConfigError(message, file=self.file, line=self.line_of(key),
                           field=self.field_name(key))

    # Typed getters -----------------------------------------------------------------------------
    def _get(self, key: str, default: Any) -> Any:
        self._used.add(key)
        if key in self._data and self._data[key] is not None:
            return self._data[key]
        if default is _MISSING:
            raise self.error(key, "required field is missing")
        return default

    def get_str(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(key, f"expected a string, got {_describe(value)}")
        return str(value)

    def get_int(self, key: str, default: Any = _MISSING, *, min: int | None = None,
            max: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_describe(value)}")
        if min is not None and value < min:
            raise self.error(key, f"must be at least {min}, got {value}")
        if max is not None and value > max:
            raise self.error(key, f"must be at most {max}, got {value}")
        return value

    def get_float(self, key: str, default: Any = _MISSING, *, min: float | None = None,
              max: float | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {_describe(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise self.error(key, f"must be a finite number, got {value}") from None
        if not math.isfinite(value):
            # NaN passes every min/max comparison, and neither NaN nor infinity survives JSON
            # or a sleep; an unbounded setting is written by leaving the field out.
            raise self.error(key, f"must be a finite number, got {value}")
        if min is not None and value < min:
            raise self.error(key, f"must be at least {min}, got {value}")
        if max is not None and value > max:
            raise self.error(key, f"must be at most {max}, got {value}")
        return value

    def get_bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_describe(value)}")
        return value

    def get_port(self, key: str, default: Any = _MISSING) -> Any:
        """A TCP/UDP port: 0 (any free port) to 65535."""
        return self.get_int(key, default, min=0, max=65535)

    def get_choice(self, key: str, choices: tuple[str, ...] | list[str], default: Any = _MISSING) -> Any:
        value = self.get_str(key, default)
        if value is default:
            return value
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def get_networks(self, key: str, default: Any = _MISSING) -> Any:
        """A list of CIDR networks (``10.0.0.0/8``, ``127.0.0.1``)."""
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of networks, got {_describe(value)}")
        nets = []
        for item in value:
            try:
                nets.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                raise self.error(key, f"not an IP network: {item!r}") from None
        return nets

    def get_section(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value if value is None or isinstance(value, Section) else Section(
                value, file=self.file, path=self.field_name(key), line=self.line_of(key))
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_describe(value)}")
        return Section(value, file=self.file, path=self.field_name(key), line=self.line_of(key))

    def get_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {_describe(value)}")
        return list(value)

    def get_sections(self, key: str, default: Any = _MISSING) -> Any:
        """A list of mappings, each returned as a :class:`Section` with its own line."""
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {_describe(value)}")
        lines = getattr(value, "lines", [self.line_of(key)] * len(value))
        out = []
        for i, item in enumerate(value):
            path = f"{self.field_name(key)}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"expected a mapping, got {_describe(item)}", file=self.file,
                                  line=lines[i], field=path)
            out.append(Section(item, file=self.file, path=path, line=lines[i]))
        return out

    def get_mapping(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_describe(value)}")
        return dict(value)

    def unknown_keys(self) -> list[str]:
        """Keys present in the file but never read by a getter (likely typos)."""
        return [k for k in self._data if k not in self._used]

    def check_no_unknown(self, allowed_extra: tuple[str, ...] = ()) -> None:
        extra = [k for k in self.unknown_keys() if k not in allowed_extra]
        if extra:
            close = difflib.get_close_matches(extra[0], sorted(self._used), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(extra[0], f"unknown field {extra[0]!r}{hint}")

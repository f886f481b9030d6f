"""Spec files as YAML text, both ways, with PyYAML's exact bytes.

Reading: ``load_yaml`` (safe, no aliases). Writing: ``yaml.safe_dump(data, sort_keys=False,
width=100)``'s output, byte for byte, by three paths from fastest to most general: the block
writer for what generated specs hold (``write_yaml``), libyaml fed the serializer's events
(``dump_yaml``), and safe_dump itself for anything else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import yaml


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases: a spec never needs them, and alias bombs
    ("billion laughs") would make validation walk an exponentially large document.
    (The pure-Python loader: used only where PyYAML was built without libyaml.)"""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not allowed in a spec")
        return super().compose_node(parent, index)


_ALIAS = yaml.YAMLError("aliases are not allowed in a spec")


def load_yaml(text: str | bytes) -> Any:
    """``yaml.safe_load`` that refuses aliases, on libyaml's parser when PyYAML has it.

    libyaml's composer runs in C, so aliases cannot be refused while composing as
    ``_SpecLoader`` does; they are refused from the event stream instead. An alias is a
    ``*name`` token, so a document without any ``*`` has none and is loaded directly; one with a
    ``*`` (in a string, say) is first parsed into events (no node is built from an alias there)
    and refused if an ``AliasEvent`` comes up. libyaml also caps nesting depth (1000).
    """
    if not yaml.__with_libyaml__:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader without aliases
    star = b"*" if isinstance(text, bytes) else "*"
    if star in text:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise _ALIAS
    return yaml.load(text, Loader=yaml.CSafeLoader)  # noqa: S506 - CSafeLoader, aliases refused


# --- writing: safe_dump's output from events -------------------------------------------------
#
# ``yaml.safe_dump`` spends most of its time in PyYAML's Python representer and resolver (one
# node and two resolver look-ups per scalar; a spec has ~400 scalars), even with libyaml's
# emitter. ``dump_yaml`` hands libyaml the serializer's events directly: the same events with the
# same implicit-tag flags give the same text (tests compare it with safe_dump on many specs).

_STR, _RESOLVER = "tag:yaml.org,2002:str", yaml.resolver.Resolver()
_PLAIN = (True, False)  # a number, bool or null: its plain text resolves to its own type


@lru_cache(maxsize=65536)
def _str_implicit(value: str) -> tuple[bool, bool]:
    """The serializer's ``implicit`` for a string: may it be written plain (it would not be read
    back as another type)?"""
    return (_RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == _STR, True)


def _float_text(value: float) -> str:
    """SafeRepresenter.represent_float, finite values (a spec holds no others)."""
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


def _events(data: Any, out: list) -> None:
    if isinstance(data, str):
        out.append(yaml.ScalarEvent(None, None, _str_implicit(data), data))
    elif isinstance(data, bool):
        out.append(yaml.ScalarEvent(None, None, _PLAIN, "true" if data else "false"))
    elif isinstance(data, int):
        out.append(yaml.ScalarEvent(None, None, _PLAIN, str(data)))
    elif isinstance(data, float):
        if not math.isfinite(data):
            raise TypeError("non-finite float")
        out.append(yaml.ScalarEvent(None, None, _PLAIN, _float_text(data)))
    elif data is None:
        out.append(yaml.ScalarEvent(None, None, _PLAIN, "null"))
    elif isinstance(data, list):
        out.append(yaml.SequenceStartEvent(None, None, True, flow_style=False))
        for item in data:
            _events(item, out)
        out.append(yaml.SequenceEndEvent())
    elif isinstance(data, dict):
        out.append(yaml.MappingStartEvent(None, None, True, flow_style=False))
        for key, value in data.items():
            if not isinstance(key, str):
                raise TypeError("non-string key")
            _events(key, out)
            _events(value, out)
        out.append(yaml.MappingEndEvent())
    else:
        raise TypeError(type(data).__name__)


def dump_yaml(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False, width=100)`` for plain JSON-like data (str keys,
    finite floats), several times faster; anything else goes through safe_dump itself."""
    if not yaml.__with_libyaml__:
        return yaml.safe_dump(data, sort_keys=False, width=100)
    events = [yaml.StreamStartEvent(), yaml.DocumentStartEvent(explicit=False)]
    try:
        _events(data, events)
    except (TypeError, RecursionError):
        return yaml.safe_dump(data, sort_keys=False, width=100)
    events += [yaml.DocumentEndEvent(explicit=False), yaml.StreamEndEvent()]
    return yaml.emit(events, Dumper=yaml.CSafeDumper, width=100)


# --- writing: the common case without events ------------------------------------------------
#
# Even fed with events, libyaml's path costs building ~550 event objects per spec plus the JSON
# round trip of ``to_dict``. Generated specs use a small part of YAML: block mappings and
# sequences of finite floats, ints, bools, nulls and short strings of [A-Za-z0-9_./-]. For those
# the emitter's layout is fixed (keys at the mapping's indent; a sequence under a key at the
# key's indent, "- " items; a collection inside a sequence item starts on the item's line,
# indented by 2; empty collections as [] / {}), so the text is written directly. Any other value
# raises ``_NotBlockPlain`` and the whole spec goes through ``dump_yaml`` (tests compare both
# with safe_dump).


class _NotBlockPlain(Exception):
    """A value outside what ``_block_mapping`` writes; the caller falls back to ``dump_yaml``."""


_SIMPLE_STR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,99}").fullmatch
# Mapping-like types the block writer writes (the spec's dataclasses, registered by
# farm/model/spec.py): type -> its items as ``to_dict`` would give them.
MAPPINGS: dict[type, Callable[[Any], dict]] = {}


@lru_cache(maxsize=65536)
def _str_text(value: str) -> str | None:
    """A simple string's emitted text (None: not simple). Such a string has no quote, space or
    indicator: it is plain, or single-quoted where it would read back as another type."""
    if _SIMPLE_STR(value) is None:
        return None
    return value if _str_implicit(value)[0] else f"'{value}'"


def _scalar_text(value: Any) -> str | None:
    """The emitted text of a scalar; None for a collection; raises for anything unknown."""
    kind = type(value)
    if kind is float:
        if value - value != 0.0:  # inf or nan
            raise _NotBlockPlain
        text = repr(value)
        return text if "e" not in text else _float_text(value)
    if kind is str:
        text = _str_text(value)
        if text is None:
            raise _NotBlockPlain
        return text
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is list or kind is tuple or kind is dict or kind in MAPPINGS:
        return None
    raise _NotBlockPlain


def _mapping_items(value: Any) -> dict:
    """What ``to_dict`` makes of a mapping-like value (``MAPPINGS`` for the spec's dataclasses)."""
    kind = type(value)
    if kind is dict:
        return value
    items = MAPPINGS.get(kind)
    if items is None:
        raise _NotBlockPlain
    return items(value)


def _block_mapping(data: dict, indent: int, inline: bool, out: list[str]) -> None:
    """Append the block mapping ``data`` with keys at column ``indent``; ``inline``: the first
    key goes on the current line (after a sequence item's "- ")."""
    pad = " " * indent
    lead = "" if inline else pad
    for key, value in data.items():
        if type(key) is not str:
            raise _NotBlockPlain
        key_text = _scalar_text(key)
        text = _scalar_text(value)
        if text is not None:
            out.append(f"{lead}{key_text}: {text}\n")
        elif type(value) is list or type(value) is tuple:
            if value:
                out.append(f"{lead}{key_text}:\n")
                _block_sequence(value, indent, False, out)
            else:
                out.append(f"{lead}{key_text}: []\n")
        else:
            items = _mapping_items(value)
            if items:
                out.append(f"{lead}{key_text}:\n")
                _block_mapping(items, indent + 2, False, out)
            else:
                out.append(f"{lead}{key_text}: {{}}\n")
        lead = pad


def _block_sequence(data: list | tuple, indent: int, inline: bool, out: list[str]) -> None:
    """Append the block sequence ``data`` with its "- " at column ``indent`` (see
    ``_block_mapping`` for ``inline``)."""
    pad = " " * indent
    lead = "" if inline else pad
    for value in data:
        if type(value) is float and value - value == 0.0:  # most values: finite floats
            text = repr(value)
            out.append(f"{lead}- {text}\n" if "e" not in text else
                       f"{lead}- {_float_text(value)}\n")
            lead = pad
            continue
        if type(value) is list and len(value) == 3:  # most lists: [x, y, z] rows of polys
            x, y, z = value
            if type(x) is float and type(y) is float and type(z) is float:
                tx, ty, tz = repr(x), repr(y), repr(z)
                joined = tx + ty + tz
                if "e" not in joined and "n" not in joined:  # no exponent, no inf or nan
                    out.append(f"{lead}- - {tx}\n{pad}  - {ty}\n{pad}  - {tz}\n")
                    lead = pad
                    continue
        text = _scalar_text(value)
        if text is not None:
            out.append(f"{lead}- {text}\n")
        elif type(value) is list or type(value) is tuple:
            if value:
                out.append(f"{lead}- ")
                _block_sequence(value, indent + 2, True, out)
            else:
                out.append(f"{lead}- []\n")
        else:
            items = _mapping_items(value)
            if items:
                out.append(f"{lead}- ")
                _block_mapping(items, indent + 2, True, out)
            else:
                out.append(f"{lead}- {{}}\n")
        lead = pad


def write_yaml(fields: dict, plain: Callable[[], Any]) -> str:
    """The YAML text of a mapping of the registered types (``MAPPINGS``): written directly when
    every value is one the block writer knows, else ``dump_yaml(plain())`` (``plain``: the same
    data as plain Python, e.g. ``VideoSpec.to_dict``)."""
    out: list[str] = []
    try:
        _block_mapping(fields, 0, False, out)
    except (_NotBlockPlain, RecursionError):
        return dump_yaml(plain())
    return "".join(out)

"""Load YAML with line numbers, refusing duplicate keys and alias bombs.

PyYAML's ``safe_load`` silently keeps the last of two duplicate keys and expands
aliases without limit; both are traps in files written by hand. This loader walks
the composed node tree itself, so it can report ``file:line`` for every value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncd.fsutil import NotRegularFile, TooLarge, read_regular

Location = tuple[str | int, ...]
MAX_NODES = 100_000
MAX_DEPTH = 64
MERGE_TAG = "tag:yaml.org,2002:merge"
# Tags that mean plain data; anything else (!!python/…, custom !tags) is refused, never constructed.
PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("map", "seq", "str", "int", "float", "bool", "null", "timestamp")
)


class YamlProblem(Exception):
    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class LoadedYaml:
    data: Any
    lines: dict[Location, int] = field(default_factory=dict)
    sha256: str | None = None  # of the file's bytes, when it came from a file

    def line_of(self, location: Location) -> int | None:
        """The line of ``location`` or of its closest parent that has one."""
        loc = tuple(location)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)


class _CountingLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
        return super().compose_node(parent, index)


if yaml.__with_libyaml__:

    class _ComposingLoader(yaml.CSafeLoader):
        """libyaml's parser and composer, for a document without anchors: no alias to count."""

        alias_count = 0


def _compose_fast(text: str) -> tuple[Any, Any] | None:
    """(loader, root node) from libyaml, several times faster than PyYAML's own parser; None when it may
    not be used, or refuses the text. An alias names an anchor, and an anchor is written with "&": text
    without one has no alias to count. What libyaml refuses is parsed again by PyYAML, whose messages say
    what to fix."""
    if not yaml.__with_libyaml__ or "&" in text:
        return None
    loader = _ComposingLoader(text)
    try:
        return loader, loader.get_single_node()
    except Exception:
        return None
    finally:
        loader.dispose()


def _compose(text: str) -> tuple[Any, Any]:
    """(loader, root node) from PyYAML's parser, counting aliases; YamlProblem on error."""
    try:
        loader = _CountingLoader(text)  # the reader rejects control characters right here
    except yaml.reader.ReaderError as exc:
        raise YamlProblem(
            f"not valid YAML: the control character {exc.character!r} is not allowed; remove it", _line_of(exc, text)
        ) from None
    try:
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlProblem(f"not valid YAML: {exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlProblem(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()


def loads(text: str, *, allow_aliases: bool = True) -> LoadedYaml:
    """Parse one YAML document; raise :class:`YamlProblem` with a line number on error."""
    loader, root = _compose_fast(text) or _compose(text)
    if loader.alias_count and not allow_aliases:
        raise YamlProblem("YAML anchors and aliases (&name / *name) are not allowed here; write the values out")
    result = LoadedYaml(data=None)
    if root is None:
        return result
    counter = [0]
    result.data = _construct(loader, root, (), result.lines, counter, ())
    return result


def _line_of(exc: Exception, text: str) -> int | None:
    position = getattr(exc, "position", None)
    return text[:position].count("\n") + 1 if isinstance(position, int) else None


def load_file(path: Path, *, max_bytes: int = 1024 * 1024, allow_aliases: bool = True) -> LoadedYaml:
    """Parse a YAML file of at most ``max_bytes``. Only a regular file is opened: a FIFO, socket, device or
    folder is refused at once (never blocks, never reads without end)."""
    try:
        raw = read_regular(path, max_bytes)
    except NotRegularFile as exc:
        raise YamlProblem(f"{exc.strerror}; give the path of a YAML file") from None
    except TooLarge as exc:
        raise YamlProblem(f"file is {exc.size} bytes; the limit is {max_bytes} bytes") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlProblem("file is not valid UTF-8; save it as UTF-8 text", line) from None
    loaded = loads(text, allow_aliases=allow_aliases)
    loaded.sha256 = hashlib.sha256(raw).hexdigest()
    return loaded


def _construct(loader, node, location: Location, lines: dict, counter: list[int], ancestors: tuple) -> Any:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise YamlProblem(f"document expands to more than {MAX_NODES} values (alias bomb?)")
    line = node.start_mark.line + 1
    if id(node) in ancestors:
        raise YamlProblem("an alias refers to a value that contains it (a recursive alias)", line)
    if len(ancestors) >= MAX_DEPTH:
        raise YamlProblem(f"nested too deeply (more than {MAX_DEPTH} levels)", line)
    ancestors = ancestors + (id(node),)
    lines[location] = line
    if node.tag not in PLAIN_TAGS:
        raise YamlProblem(
            f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed; write plain values", line
        )
    if isinstance(node, yaml.MappingNode):
        explicit: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                raise YamlProblem("a mapping key must be a plain value", key_node.start_mark.line + 1)
            if key in explicit:
                raise YamlProblem(
                    f"duplicate key {key!r} (first at line {explicit[key]}); keep only one",
                    key_node.start_mark.line + 1,
                )
            explicit[key] = key_node.start_mark.line + 1
        # Merge keys (<<: *base) come first after flattening, so explicit keys override them.
        loader.flatten_mapping(node)
        result: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            result[key] = _construct(loader, value_node, location + (key,), lines, counter, ancestors)
            lines[location + (key,)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(loader, child, location + (index,), lines, counter, ancestors)
            for index, child in enumerate(node.value)
        ]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise YamlProblem(f"cannot read value: {exc.problem}", node.start_mark.line + 1) from None

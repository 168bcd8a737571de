"""syncd.yamlfile: YAML with line numbers, duplicate keys and alias bombs refused."""

from __future__ import annotations

import time

import pytest

from syncd.yamlfile import MAX_NODES, YamlProblem, load_file, loads

DOC = """\
# comment
state_dir: .state
inboxes:
  - name: a
    path: inbox

  - name: b
    nested:
      deep: 1
"""


def test_loads_records_line_of_every_key_and_item():
    loaded = loads(DOC)
    assert loaded.data["inboxes"][1]["nested"] == {"deep": 1}
    assert loaded.lines[("state_dir",)] == 2
    assert loaded.lines[("inboxes",)] == 3
    assert loaded.lines[("inboxes", 0)] == 4
    assert loaded.lines[("inboxes", 0, "path")] == 5
    assert loaded.lines[("inboxes", 1)] == 7
    assert loaded.lines[("inboxes", 1, "nested", "deep")] == 9


def test_line_of_falls_back_to_closest_parent():
    loaded = loads(DOC)
    assert loaded.line_of(("inboxes", 1, "nested", "missing", "deeper")) == 8
    assert loaded.line_of(("inboxes", 0, "backend")) == 4
    assert loaded.line_of(("nowhere",)) == loaded.lines[()]


def test_loads_empty_document_is_none():
    assert loads("").data is None
    assert loads("# only a comment\n").data is None


def test_loads_refuses_duplicate_key_with_both_lines():
    with pytest.raises(YamlProblem) as info:
        loads("a: 1\nb: 2\na: 3\n")
    assert info.value.line == 3
    assert "duplicate key 'a'" in info.value.message
    assert "first at line 1" in info.value.message


def test_loads_refuses_duplicate_key_in_nested_mapping():
    with pytest.raises(YamlProblem) as info:
        loads("top:\n  x: 1\n  y: 2\n  x: 3\n")
    assert info.value.line == 4
    assert "duplicate key 'x' (first at line 2)" in info.value.message


def test_loads_reports_syntax_error_with_line():
    with pytest.raises(YamlProblem) as info:
        loads("a: 1\nb: [1, 2\nc: 3\n")
    assert info.value.message.startswith("not valid YAML")
    assert info.value.line is not None and info.value.line >= 2


def test_loads_refuses_aliases_when_not_allowed():
    text = "base: &b {x: 1}\nother: *b\n"
    with pytest.raises(YamlProblem) as info:
        loads(text, allow_aliases=False)
    assert "anchors and aliases" in info.value.message
    assert loads(text, allow_aliases=True).data == {"base": {"x": 1}, "other": {"x": 1}}


def test_loads_caps_alias_bomb():
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=False):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    started = time.monotonic()
    with pytest.raises(YamlProblem) as info:
        loads("\n".join(lines) + "\n")
    assert f"more than {MAX_NODES} values" in info.value.message
    assert time.monotonic() - started < 5


def test_loads_refuses_recursive_alias_as_a_problem():
    # A self-referencing anchor must be a YamlProblem, not a RecursionError crash.
    with pytest.raises(YamlProblem):
        loads("a: &a [*a]\n")


def test_loads_refuses_deep_nesting_as_a_problem():
    # A small hand-made (or hostile) file must never crash the loader with RecursionError.
    with pytest.raises(YamlProblem):
        loads("a: " + "[" * 2000 + "]" * 2000 + "\n")


def test_loads_merge_key_is_overridden_by_explicit_key():
    # YAML merge keys: an explicit key wins over a merged one; that is not a duplicate.
    loaded = loads("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert loaded.data["other"] == {"x": 3, "y": 2}


def test_loads_refuses_unhashable_key_with_line():
    with pytest.raises(YamlProblem) as info:
        loads("a: 1\n? [1, 2]\n: 3\n")
    assert info.value.line == 2
    assert "plain value" in info.value.message


def test_load_file_reports_invalid_utf8_with_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: 1\nb: 2\nc: caf\xe9\n")
    with pytest.raises(YamlProblem) as info:
        load_file(path)
    assert info.value.line == 3
    assert "not valid UTF-8" in info.value.message


def test_load_file_enforces_size_limit(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: " + "x" * 200 + "\n")
    with pytest.raises(YamlProblem) as info:
        load_file(path, max_bytes=100)
    assert info.value.message == f"file is {path.stat().st_size} bytes; the limit is 100 bytes"
    assert load_file(path, max_bytes=1000).data == {"a": "x" * 200}


def test_load_file_reads_utf8_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: Ünïcødé ✓\n", encoding="utf-8")
    assert load_file(path).data == {"name": "Ünïcødé ✓"}


_TRICKY = [
    DOC,
    "command: echo hi > out.txt\ninputs: [a.txt, 'b c.txt']\noutputs: ['*.txt']\n",
    "a: 1\nb: 1.5\nc: true\nd: ~\ne: 2001-12-14\nf: '007'\ng: 0o17\nh: 1_000\ni: .inf\nj: yes\n",
    "text: |\n  two\n  lines\nfolded: >-\n  one\n  line\nplain: multi\n  word\n",
    '- [1, {a: b}]\n- ? complex\n  : value\n- "esc\\tape \\u00e9"\n',
    "name: café ünïcödé 名前\nemoji: \U0001f600\n",
    "\ufeffbom: first\n",
    "",
    "# only a comment\n",
    "a: 1\na: 2\n",
    "key: !!python/object:os.system x\n",
    "a: [1, 2\n",
    "a: \x07\n",
    "a: *undefined\n",
    "a: b: c\n",
    "\ta: tab\n",
    "a: 'unterminated\n",
    "--- 1\n--- 2\n",
]


@pytest.mark.parametrize("text", _TRICKY)
def test_libyaml_and_pyyaml_read_every_document_alike(text, monkeypatch):
    """The fast path (libyaml, for text without an anchor) gives the same values, lines and problems as
    PyYAML's parser; what libyaml refuses is handed to PyYAML, whose messages are the ones users see."""
    import yaml

    from syncd import yamlfile

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml here: there is no fast path to compare")

    def read(fast: bool):
        if not fast:
            monkeypatch.setattr(yamlfile, "_compose_fast", lambda text: None)
        try:
            loaded = loads(text)
        except YamlProblem as exc:
            return ("problem", exc.message, exc.line)
        finally:
            monkeypatch.undo()
        return ("data", loaded.data, loaded.lines)

    assert read(fast=True) == read(fast=False)


def test_the_fast_path_serves_a_plain_manifest_and_leaves_anchors_to_the_counting_parser():
    import yaml

    from syncd import yamlfile

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml here: there is no fast path to compare")
    assert yamlfile._compose_fast("command: echo hi\n") is not None
    assert yamlfile._compose_fast("base: &b {x: 1}\nuse: *b\n") is None
    assert yamlfile._compose_fast("a: [1, 2\n") is None  # refused: PyYAML says why
    with pytest.raises(YamlProblem, match="not allowed"):
        loads("base: &b {x: 1}\nuse: *b\n", allow_aliases=False)

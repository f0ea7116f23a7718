"""Text checked at the edge (orchestrator.text_input): what is refused, what is kept."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import UsageError
from orchestrator.text_input import (
    BadJSONError,
    check_path,
    check_text,
    display_safe,
    parse_json_object,
    strip_terminal_escapes,
)


def test_format_characters_are_text() -> None:
    for text in ("👩\u200d💻 fix", "תיקון\u200f", "\u200eleft"):
        assert check_text(text, "the title", one_line=True) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\ud800b", r"lone UTF-16 surrogate \(\\ud800 at character 1\)"),
        ("a\x00b", "NUL"),
        ("a\nb", "control characters"),
    ],
)
def test_refused_text_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_text(text, "the title", one_line=True)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/tmp/" + "x" * 300, "component of 300 bytes"),
        ("/" + "/".join(["y" * 200] * 30), "the limit is 4096"),
        ("relative/path", "not an absolute path"),
        ("~no-such-user-here/repo", "unknown home directory"),
        ("/tmp/\udc80", "lone UTF-16 surrogate"),
    ],
)
def test_paths_the_os_cannot_take_are_refused(path: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_path(path, "repo")


def test_display_safe_drops_overrides_and_keeps_marks() -> None:
    assert display_safe("\u202eevil\u202c and \u2066iso\u2069") == "evil and iso"
    assert display_safe("שלום\u200f 👩\u200d💻") == "שלום\u200f 👩\u200d💻"
    assert display_safe("x\ud800") == "x?"


def test_webhook_json_names_where_a_surrogate_is() -> None:
    body = json.dumps({"issue": {"labels": [{"name": "ok"}, {"name": "\udfff"}]}}).encode()
    with pytest.raises(BadJSONError, match=r"^issue\.labels\[1\]\.name contains a lone"):
        parse_json_object(body)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(BadJSONError, match="nested too deeply"):
        parse_json_object(b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


# Keys without NUL (a NUL in a key refuses the body: test_a_nul_in_a_key_is_refused).
keys = st.text(alphabet=st.characters(exclude_characters="\x00"))


def test_a_nul_in_a_key_is_refused() -> None:
    with pytest.raises(BadJSONError, match="a key in the body"):
        parse_json_object(b'{"a\\u0000b": 1}')


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(keys, json_values, max_size=4))
def test_parse_json_object_takes_valid_unicode_or_says_why(value: dict[str, object]) -> None:
    body = json.dumps(value).encode()  # ensure_ascii: surrogates become \\udXXX escapes
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        has_surrogate = False
    except UnicodeEncodeError:
        has_surrogate = True
    if has_surrogate:
        with pytest.raises(BadJSONError, match=r"lone UTF-16 surrogate|NUL"):
            parse_json_object(body)
        return
    parsed = parse_json_object(body)
    # What comes back can be stored: it encodes as UTF-8 and holds no NUL.
    json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    assert "\\u0000" not in json.dumps(parsed)


def test_terminal_escapes_are_dropped_and_the_text_kept() -> None:
    coloured = (
        "\x1b[32m.\x1b[0m\x1b[32m.\x1b[0m \x1b[32m\x1b[1m82 passed\x1b[0m\x1b[32m in 0.66s\x1b[0m"
    )
    assert strip_terminal_escapes(coloured) == ".. 82 passed in 0.66s"
    titled = "\x1b]0;pytest\x07ok \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b(Bdone\x1b[2K\r"
    assert strip_terminal_escapes(titled) == "ok link done\r"


@given(st.text())
def test_no_escape_survives_and_plain_text_is_untouched(text: str) -> None:
    stripped = strip_terminal_escapes(text)
    assert "\x1b" not in stripped
    assert not any("\x80" <= ch <= "\x9f" for ch in stripped)
    if not any(ch == "\x1b" or "\x80" <= ch <= "\x9f" for ch in text):
        assert stripped == text

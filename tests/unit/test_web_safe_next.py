"""Where the login form sends a person afterwards (web/routes.safe_next): only a path of
the dashboard on this server, whatever ``next`` says (hypothesis). Seen failing with
the prefix check alone (``/ui/\\evil`` and control characters got through)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api.web.routes import UI_HOME, safe_next


@given(st.one_of(st.none(), st.text(max_size=60), st.text(max_size=40).map("/ui/".__add__)))
def test_the_target_is_always_a_dashboard_path_of_this_server(target: str | None) -> None:
    chosen = safe_next(target)
    assert chosen.startswith(UI_HOME)
    assert not chosen.startswith("//")
    assert "\\" not in chosen
    assert all(ord(ch) >= 0x20 for ch in chosen)
    if target is not None and chosen != UI_HOME:
        assert chosen == target


def test_known_escapes_go_home() -> None:
    for target in (
        "//evil.example/",
        "https://evil.example/ui/",
        "/ui/\\evil",
        "/ui/\r\nSet-Cookie: x=1",
        "/tasks/1",
        "",
        "/ui/" + "a" * 5000,
    ):
        assert safe_next(target) == UI_HOME
    assert safe_next("/ui/tasks/3?done=approve") == "/ui/tasks/3?done=approve"

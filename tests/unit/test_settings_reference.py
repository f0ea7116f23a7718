"""The settings reference (docs/settings.md) is generated and complete."""

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.field_docs import field_docs, parse_field_comments
from orchestrator.settings import Settings
from orchestrator.settings_reference import (
    REGENERATE_COMMAND,
    TABLES,
    render_settings_reference,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = [Settings, *(model for model, _, _ in TABLES)]


def test_settings_reference_in_docs_is_generated_from_the_models() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert committed == render_settings_reference(), (
        f"docs/settings.md is stale (a setting was added or changed): run "
        f"`.venv/bin/{REGENERATE_COMMAND}` and commit it"
    )


def test_every_setting_has_a_meaning() -> None:
    missing = [
        f"{model.__name__}.{doc.name}"
        for model in MODELS
        for doc in field_docs(model)
        if not doc.description.strip()
    ]
    assert not missing, (
        f"settings without a description: {missing}; write a `# comment` above each in "
        f"src/orchestrator/settings.py, then run `.venv/bin/{REGENERATE_COMMAND}`"
    )


def test_the_reference_names_every_setting_and_its_variable() -> None:
    reference = render_settings_reference()
    for name in Settings.model_fields:
        assert f"`ORCH_{name.upper()}`" in reference, name
    for model, _, _ in TABLES:
        for name in model.model_fields:
            assert f"`{name}`" in reference, (model.__name__, name)
    # The two the issue found documented nowhere.
    assert "`log_max_bytes`" in reference
    assert "`instance_name`" in reference


def test_the_readme_points_at_the_reference() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/settings.md" in readme


names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
comments = st.lists(
    st.text(alphabet="abc xyz=().,'\"-", min_size=1, max_size=30)
    .map(str.strip)
    .filter(lambda text: text and not text.startswith("---")),  # "# ---" starts a section
    max_size=3,
)


@given(
    st.lists(
        st.tuples(names, comments, st.booleans()), min_size=1, max_size=8, unique_by=lambda f: f[0]
    )
)
def test_each_field_gets_the_comment_block_right_above_it(
    fields: list[tuple[str, list[str], bool]],
) -> None:
    """A field with its own comment gets it; a field right below another (no blank line,
    no comment) shares the one above; after a blank line, a field without a comment has
    none."""
    lines = ["class Model(BaseModel):"]
    expected: dict[str, str] = {}
    previous = ""
    for index, (name, comment, blank_before) in enumerate(fields):
        if blank_before or index == 0:
            lines.append("")
            previous = ""
        lines += [f"    # {text}" for text in comment]
        lines.append(f"    {name}: int = Field(")
        lines.append("        default=1, ge=0")
        lines.append("    )")
        if comment:
            previous = " ".join(comment)
        expected[name] = previous
    lines += [
        "",
        "    @field_validator('x')",
        "    def _x(cls, value: int) -> int:",
        "        return value",
    ]
    parsed = parse_field_comments("\n".join(lines))
    assert {name: found[0] for name, found in parsed.items()} == expected


def test_a_section_header_describes_no_field() -> None:
    source = "class M:\n    # --- limits ---\n    a: int = 1\n    # Meaning.\n    b: int = 2\n"
    assert parse_field_comments(source) == {"a": ("", "limits"), "b": ("Meaning.", "limits")}

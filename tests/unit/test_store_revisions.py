"""The migrations' heads read as text (:mod:`orchestrator.store.revisions`), on planted
version files; the real directory is compared with Alembic's own answer in
``tests/integration/test_migrations.py``."""

from __future__ import annotations

from pathlib import Path

from orchestrator.store.revisions import migration_heads


def _versions(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(f'"""{name}"""\n\n{text}\n')
    return tmp_path


def test_the_head_is_the_revision_nothing_builds_on(tmp_path: Path) -> None:
    versions = _versions(
        tmp_path,
        {
            "a.py": 'revision = "0001"\ndown_revision = None',
            "b.py": "revision: str = '0003'\ndown_revision: str | None = '0002'",
            "c.py": 'revision = "0002"\ndown_revision = "0001"',
        },
    )

    assert migration_heads(versions) == {"0003"}


def test_a_merge_names_both_parents_and_branches_have_two_heads(tmp_path: Path) -> None:
    files = {
        "a.py": 'revision = "a"\ndown_revision = None',
        "b.py": 'revision = "b"\ndown_revision = "a"',
        "c.py": 'revision = "c"\ndown_revision = "a"',
    }
    assert migration_heads(_versions(tmp_path, files)) == {"b", "c"}

    merge = {"d.py": 'revision = "d"\ndown_revision = ("b", "c")'}
    assert migration_heads(_versions(tmp_path, merge)) == {"d"}


def test_a_file_that_does_not_say_its_revision_makes_the_heads_unknown(tmp_path: Path) -> None:
    versions = _versions(
        tmp_path,
        {
            "a.py": 'revision = "a"\ndown_revision = None',
            "b.py": 'REVISION = "b"\ndown_revision = "a"',
        },
    )

    assert migration_heads(versions) is None

"""The demo project: a small real Python repository with a git history.

``orch demo`` and the tests drive the scripted agent over it. ``textkit`` is a package
of string helpers with passing tests; work item ``DEMO-1`` ("add a slugify helper")
comes with a recipe for the scripted agent whose development change adds a real
``textkit.slugify`` and tests for it. :func:`write_failing_recipe` commits a recipe whose
change adds a buggy ``textkit.wordcount`` and a test that catches the bug, so testing
fails every time. :func:`write_red_green_recipe` commits a recipe in two rounds: the
first development run writes that bug (testing is red), the second, after reading the
failure report, the fix (testing is green).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Final

from orchestrator.errors import RepositoryError, UsageError
from orchestrator.kernel.gates import ARTIFACT_ROOT

__all__ = [
    "DEMO_TASK_DESCRIPTION",
    "DEMO_TASK_TITLE",
    "DEMO_WORK_ITEM",
    "create_demo_repository",
    "recipe_path",
    "write_failing_recipe",
    "write_red_green_recipe",
]

DEMO_WORK_ITEM: Final = "DEMO-1"
DEMO_TASK_TITLE: Final = "Add a slugify helper to textkit"
DEMO_TASK_DESCRIPTION: Final = (
    "textkit needs slugify(text) that turns a title into a URL-safe slug. "
    "The slug is lowercase ASCII with words joined by single hyphens. "
    "Accented letters lose their accents and other symbols are dropped."
)
DEMO_BRANCH: Final = "main"
GIT_TIMEOUT_S: Final = 60
DEMO_GIT_ENV: Final = {
    "GIT_AUTHOR_NAME": "orchestrator demo",
    "GIT_AUTHOR_EMAIL": "demo@localhost",
    "GIT_COMMITTER_NAME": "orchestrator demo",
    "GIT_COMMITTER_EMAIL": "demo@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}

README: Final = """\
# textkit

Small string helpers: the demo project of the orchestrator.

Run the tests with `python -m pytest` from this directory.

## Helpers

- `title_case(text)`: capitalise words, keeping short words lower case.
- `truncate(text, width)`: shorten text to a width, ending with "...".
"""

PYPROJECT: Final = """\
[project]
name = "textkit"
version = "0.1.0"
description = "Small string helpers (the orchestrator demo project)."
requires-python = ">=3.11"

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
"""

GITIGNORE: Final = """\
__pycache__/
.pytest_cache/
"""

TEXTKIT_INIT: Final = '''\
"""textkit: small string helpers."""

from textkit.strings import title_case, truncate

__all__ = ["title_case", "truncate"]
'''

TEXTKIT_STRINGS: Final = '''\
"""Helpers that reshape text."""

from __future__ import annotations

__all__ = ["title_case", "truncate"]

SMALL_WORDS = frozenset("a an and at but by for in of on or the to".split())


def title_case(text: str) -> str:
    """Capitalise each word; small words stay lower case unless first or last."""
    words = text.split()
    cased = []
    for index, word in enumerate(words):
        lower = word.lower()
        if 0 < index < len(words) - 1 and lower in SMALL_WORDS:
            cased.append(lower)
        else:
            cased.append(lower[:1].upper() + lower[1:])
    return " ".join(cased)


def truncate(text: str, width: int, placeholder: str = "...") -> str:
    """Shorten text to at most width characters, ending with placeholder when cut."""
    if width < 0:
        raise ValueError("width must be >= 0")
    if len(text) <= width:
        return text
    if width <= len(placeholder):
        return placeholder[:width]
    return text[: width - len(placeholder)].rstrip() + placeholder
'''

TESTS_TEXTKIT: Final = '''\
"""Tests of textkit's string helpers."""

import pytest

from textkit import title_case, truncate


def test_title_case_capitalises_words() -> None:
    assert title_case("hello wide world") == "Hello Wide World"


def test_title_case_keeps_small_words_lower_inside() -> None:
    assert title_case("the lord OF the rings") == "The Lord of the Rings"


def test_title_case_collapses_whitespace() -> None:
    assert title_case("  many   spaces ") == "Many Spaces"


def test_truncate_leaves_short_text_alone() -> None:
    assert truncate("short", 10) == "short"


def test_truncate_cuts_and_marks() -> None:
    assert truncate("a long sentence here", 10) == "a long..."


def test_truncate_to_tiny_width() -> None:
    assert truncate("abcdef", 2) == ".."


def test_truncate_rejects_negative_width() -> None:
    with pytest.raises(ValueError, match="width"):
        truncate("text", -1)
'''

# The recipe of DEMO-1. Literal TOML strings (''') keep the code's backslashes as written.
DEMO_RECIPE: Final = """\
# Recipe of the scripted agent for DEMO-1: add textkit.slugify with tests.

[[files]]
path = "textkit/slugify.py"
mode = "write"
content = '''
\"\"\"Slugs: URL-safe identifiers made from free text.\"\"\"

from __future__ import annotations

import re
import unicodedata

__all__ = ["slugify"]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def slugify(text: str) -> str:
    \"\"\"Lower-case ASCII words of text joined by single hyphens.

    >>> slugify("Crème Brûlée, 2 ways!")
    'creme-brulee-2-ways'
    \"\"\"
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub("-", ascii_text.lower()).strip("-")
'''

[[files]]
path = "tests/test_slugify.py"
mode = "write"
content = '''
\"\"\"Tests of textkit.slugify.\"\"\"

import pytest

from textkit.slugify import slugify


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello World", "hello-world"),
        ("  Leading and trailing  ", "leading-and-trailing"),
        ("Many   spaces -- and___symbols!!", "many-spaces-and-symbols"),
        ("Crème brûlée à la carte", "creme-brulee-a-la-carte"),
        ("Version 2.0 released", "version-2-0-released"),
        ("ALL CAPS", "all-caps"),
    ],
)
def test_slugify(text: str, expected: str) -> None:
    assert slugify(text) == expected


@pytest.mark.parametrize("text", ["", "!!!", " - "])
def test_slugify_of_nothing_is_empty(text: str) -> None:
    assert slugify(text) == ""


def test_slugify_is_idempotent() -> None:
    once = slugify("Ünïcode & Friends")
    assert once == "unicode-friends"
    assert slugify(once) == once
'''

[[files]]
path = "README.md"
mode = "append"
content = '''
- `slugify(text)`: a URL-safe slug, lowercase ASCII words joined by hyphens.
'''
"""

# A recipe whose change has a bug that its own test catches: testing always fails.
FAILING_RECIPE: Final = """\
# Recipe of the scripted agent: textkit.wordcount, with a bug its test catches.

[[files]]
path = "textkit/wordcount.py"
mode = "write"
content = '''
\"\"\"Counting words.\"\"\"

from __future__ import annotations

__all__ = ["word_count"]


def word_count(text: str) -> int:
    \"\"\"Number of words in text.\"\"\"
    return len(text.split(" "))
'''

[[files]]
path = "tests/test_wordcount.py"
mode = "write"
content = '''
\"\"\"Tests of textkit.wordcount.\"\"\"

from textkit.wordcount import word_count


def test_counts_words() -> None:
    assert word_count("one two three") == 3


def test_ignores_repeated_spaces() -> None:
    assert word_count("one  two") == 2


def test_empty_text_has_no_words() -> None:
    assert word_count("") == 0
'''
"""

_WORDCOUNT_TESTS: Final = FAILING_RECIPE[FAILING_RECIPE.index('[[files]]\npath = "tests/') :]
# Red on the first development run, green on the second: the second round expects the
# failure report to name the failing test, so it proves the agent read the feedback.
RED_GREEN_RECIPE: Final = (
    """\
# Recipe of the scripted agent: textkit.wordcount, buggy first, fixed after feedback.

"""
    + _WORDCOUNT_TESTS
    + """
[[rounds]]
run = 1
[[rounds.files]]
path = "textkit/wordcount.py"
content = '''
\"\"\"Counting words.\"\"\"

__all__ = ["word_count"]


def word_count(text: str) -> int:
    \"\"\"Number of words in text.\"\"\"
    return len(text.split(" "))
'''

[[rounds]]
run = 2
expect_feedback = ["test_ignores_repeated_spaces"]
[[rounds.files]]
path = "textkit/wordcount.py"
content = '''
\"\"\"Counting words.\"\"\"

__all__ = ["word_count"]


def word_count(text: str) -> int:
    \"\"\"Number of words in text: runs of whitespace separate words.\"\"\"
    return len(text.split())
'''
"""
)

INITIAL_FILES: Final = {
    "README.md": README,
    "pyproject.toml": PYPROJECT,
    ".gitignore": GITIGNORE,
    "textkit/__init__.py": TEXTKIT_INIT,
    "textkit/strings.py": TEXTKIT_STRINGS,
}
TEST_FILES: Final = {"tests/test_textkit.py": TESTS_TEXTKIT}
_WORK_ITEM: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _git(repo: Path, *args: str) -> None:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env={**os.environ, **DEMO_GIT_ENV},
            check=False,
        )
    except FileNotFoundError:
        raise RepositoryError("git is not installed or not on PATH; install git") from None
    except subprocess.TimeoutExpired:
        raise RepositoryError(f"git {args[0]} timed out after {GIT_TIMEOUT_S}s in {repo}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        first = detail[0] if detail else f"exit code {result.returncode}"
        raise RepositoryError(f"git {args[0]} failed in {repo}: {first}")


def _commit(repo: Path, files: dict[str, str], message: str) -> None:
    for relative, text in files.items():
        target = repo / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", newline="\n")
    _git(repo, "add", "--", *files)
    _git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", message)


def recipe_path(work_item: str) -> str:
    """Where the scripted agent looks for a work item's recipe, relative to the repository."""
    if not _WORK_ITEM.match(work_item):
        raise UsageError(f"work item {work_item!r} is not an id like {DEMO_WORK_ITEM}")
    return f"{ARTIFACT_ROOT}/{work_item}/recipe.toml"


def create_demo_repository(path: Path) -> Path:
    """Create the textkit demo repository at ``path`` (absent or empty); return ``path``.

    Three commits on ``main``: the package, its tests, and the recipe of ``DEMO-1``.
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path} exists and is not an empty directory; choose a new path")
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", DEMO_BRANCH)
    _commit(path, INITIAL_FILES, "Start textkit: title_case and truncate")
    _commit(path, TEST_FILES, "Test textkit's string helpers")
    _commit(
        path,
        {recipe_path(DEMO_WORK_ITEM): DEMO_RECIPE},
        f"Plan {DEMO_WORK_ITEM}: recipe for the scripted agent",
    )
    return path


def write_red_green_recipe(repo: Path, work_item: str) -> None:
    """Commit a recipe whose tests are red on the first development run, green on the next."""
    _commit(
        repo,
        {recipe_path(work_item): RED_GREEN_RECIPE},
        f"Plan {work_item}: red on the first development run, green after feedback",
    )


def write_failing_recipe(repo: Path, work_item: str) -> None:
    """Commit, on the current branch of ``repo``, a recipe whose tests fail for ``work_item``."""
    _commit(
        repo,
        {recipe_path(work_item): FAILING_RECIPE},
        f"Plan {work_item}: a recipe whose tests fail",
    )

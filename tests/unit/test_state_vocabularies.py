"""The vocabularies behind the state columns of decision 0023, as pure data.

* ``kernel/failures.py``: every stored kind reads back as itself; anything else reads as
  ``unknown`` (never raises); only ``environment`` gives the kernel's cause.
* ``kernel/origins.py``: an issue's key matches exactly when the origin matcher that
  scanned the ``task.created`` events did (kept below as the oracle), and stays bounded.
* Migration 0009's reading of the error texts written before it (its last reader): a
  total function onto the vocabulary, and every text the old code wrote lands on its kind.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.kernel.decisions import ENVIRONMENT
from orchestrator.kernel.failures import (
    SUPERSEDED,
    FailureKind,
    cause_of,
    parse_failure_kind,
    verdict_failure_kind,
)
from orchestrator.kernel.gates import Outcome
from orchestrator.kernel.origins import MAX_ORIGIN_KEY_CHARS, issue_key, origin_key
from orchestrator.store.store import MIGRATIONS_DIR

KINDS = st.sampled_from(list(FailureKind))


# --- failure kinds ------------------------------------------------------------------------
@given(KINDS)
def test_every_kind_reads_back_as_itself(kind: FailureKind) -> None:
    assert parse_failure_kind(str(kind)) is kind
    assert cause_of(str(kind)) == (ENVIRONMENT if kind is FailureKind.ENVIRONMENT else "")


@given(st.text(max_size=40))
def test_any_other_stored_value_reads_as_unknown(value: str) -> None:
    parsed = parse_failure_kind(value)
    assert parsed in set(FailureKind)
    if value not in {str(kind) for kind in FailureKind}:
        assert parsed is FailureKind.UNKNOWN
        assert cause_of(value) == ""


def test_none_is_no_failure_and_no_cause() -> None:
    assert parse_failure_kind(None) is None
    assert cause_of(None) == ""


def test_the_vocabulary_is_stable_and_fits_its_column() -> None:
    # The values are stored: renaming one would orphan the rows that hold it.
    assert all(len(str(kind)) <= 32 for kind in FailureKind)
    assert len({str(kind) for kind in FailureKind}) == len(FailureKind)
    assert {str(kind) for kind in SUPERSEDED} == {"lost_race", "cancelled"}


def test_a_verdict_gives_its_kind() -> None:
    assert verdict_failure_kind(Outcome.PASS) is None
    assert verdict_failure_kind(Outcome.FAIL) is FailureKind.GATE_FAILED
    assert verdict_failure_kind(Outcome.DEFER) is FailureKind.GATE_DEFERRED


# --- origins ----------------------------------------------------------------------------
def _old_match(
    origin: Mapping[str, Any], tracker: str, project: str, number: int, issue: str
) -> bool:
    """The matcher of ``webhooks.py`` before 0023 (over every ``task.created`` event)."""
    if origin.get("tracker") != tracker:
        return False
    if tracker == "plane":
        return bool(issue) and origin.get("issue_id") == issue
    return str(origin.get("repo", "")).lower() == project.lower() and origin.get("number") == number


NAMES = st.text(min_size=1, max_size=30)
NUMBERS = st.integers(min_value=1, max_value=10**6)
ORIGINS = st.one_of(
    st.fixed_dictionaries({"tracker": st.just("plane"), "issue_id": st.text(max_size=30)}),
    st.fixed_dictionaries({"tracker": st.just("github"), "repo": NAMES, "number": NUMBERS}),
    st.dictionaries(st.sampled_from(["tracker", "repo", "number", "issue_id"]), st.none()),
)
REFS = st.one_of(
    st.tuples(st.just("plane"), st.just(""), st.just(0), st.text(max_size=30)),
    st.tuples(st.just("github"), NAMES, NUMBERS, st.just("")),
)


@given(ORIGINS, REFS)
def test_a_key_matches_exactly_when_the_event_scan_matched(
    origin: dict[str, Any], ref: tuple[str, str, int, str]
) -> None:
    tracker, project, number, issue = ref
    stored = origin_key(origin)
    asked = issue_key(tracker, project=project, number=number, issue_id=issue)
    keyed = stored is not None and stored == asked
    assert keyed == _old_match(origin, tracker, project, number, issue)


# GitHub's owner and repository names are ASCII (upper-casing "ß" gives "SS").
ASCII_REFS = st.one_of(
    st.tuples(st.just("plane"), st.just(""), st.just(0), st.text(max_size=30)),
    st.tuples(
        st.just("github"),
        st.text(string.ascii_letters + string.digits + "-_./", min_size=1, max_size=30),
        NUMBERS,
        st.just(""),
    ),
)


@given(ASCII_REFS)
def test_what_intake_records_is_found_by_the_issue_it_came_from(
    ref: tuple[str, str, int, str],
) -> None:
    tracker, project, number, issue = ref
    origin = (
        {"tracker": "plane", "project_id": "p", "issue_id": issue}
        if tracker == "plane"
        else {"tracker": "github", "repo": project, "number": number}
    )
    asked = issue_key(tracker, project=project.upper(), number=number, issue_id=issue)
    if tracker == "plane" and not issue:
        assert origin_key(origin) is None
    elif tracker == "plane":
        assert origin_key(origin) == issue_key(tracker, issue_id=issue)
    else:
        assert origin_key(origin) == asked  # GitHub names are case-insensitive


@given(st.text(min_size=1, max_size=2000), st.text(min_size=1, max_size=2000))
def test_a_key_is_bounded_and_still_tells_issues_apart(first: str, second: str) -> None:
    one, two = issue_key("plane", issue_id=first), issue_key("plane", issue_id=second)
    assert one is not None
    assert two is not None
    assert len(one) <= 300
    assert len(two) <= 300
    assert (one == two) == (first == second)


def test_a_long_key_is_hashed() -> None:
    key = issue_key("plane", issue_id="x" * MAX_ORIGIN_KEY_CHARS)
    assert key is not None
    assert key.startswith("plane:sha256:")


# --- migration 0009's reading of the old error texts -----------------------------------
@pytest.fixture(scope="module")
def migration() -> ModuleType:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config).get_revision("0009")
    assert script is not None
    return script.module


@given(
    error=st.one_of(st.none(), st.text(max_size=200)),
    lost_race=st.booleans(),
    environment=st.booleans(),
    verdict=st.one_of(st.none(), st.sampled_from(["fail", "defer", "pass"]), st.text(max_size=5)),
    started=st.booleans(),
    exit_code=st.one_of(st.none(), st.integers(min_value=-1, max_value=255)),
)
def test_the_legacy_reading_is_total_and_structure_comes_first(
    migration: ModuleType,
    error: str | None,
    lost_race: bool,
    environment: bool,
    verdict: str | None,
    started: bool,
    exit_code: int | None,
) -> None:
    kind = migration.legacy_failure_kind(
        error,
        lost_race=lost_race,
        environment=environment,
        verdict=verdict,
        started=started,
        exit_code=exit_code,
    )
    assert kind in set(FailureKind)
    if lost_race:
        assert kind is FailureKind.LOST_RACE
    elif environment:
        assert kind is FailureKind.ENVIRONMENT
    elif verdict in ("fail", "defer"):
        assert kind in (FailureKind.GATE_FAILED, FailureKind.GATE_DEFERRED)


TEMPLATES = [
    ("finalize failed: {x}", FailureKind.FINALIZE_ERROR),
    ("timed out after {n}s", FailureKind.TIMEOUT),
    ("reaper tier 3: running {n}s, longer than reaper_max_running_s={n}", FailureKind.REAPED),
    ("cost budget ${n}.00 reached (${n}.00 spent); {x}", FailureKind.TASK_BUDGET),
    ("cannot start '{x}': {x}", FailureKind.LAUNCH_FAILED),
    ("task moved to {x} while the job ran", FailureKind.LOST_RACE),
    ("task is in {x}; job is stale", FailureKind.LOST_RACE),
    ("the job was lost with the previous orchestrator process", FailureKind.LOST),
    ("the job's engine died before it ended", FailureKind.LOST),
    ("the job ended without recording an exit code (killed)", FailureKind.KILLED),
    ("engine shutdown", FailureKind.KILLED),
    ("{x} went over its run budget of ${n}.00 (${n}.5 spent)", FailureKind.BUDGET),
    (
        "the {x} job would commit {n} files, more than commit_max_files = {n}",
        FailureKind.COMMIT_REFUSED,
    ),
    ("{x} exited with code {n}: {x}", FailureKind.NONZERO_EXIT),
]
WORDS = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=20)


@given(st.sampled_from(TEMPLATES), WORDS, NUMBERS)
def test_every_text_the_old_code_wrote_lands_on_its_kind(
    migration: ModuleType, template: tuple[str, FailureKind], word: str, number: int
) -> None:
    text, expected = template
    error = text.format(x=word, n=number)
    assert migration.legacy_failure_kind(error, started=True, exit_code=1) is expected


def test_without_a_known_text_the_facts_decide(migration: ModuleType) -> None:
    legacy = migration.legacy_failure_kind
    assert legacy("alice changed her mind", started=False) is FailureKind.CANCELLED
    assert legacy("boom", exit_code=3) is FailureKind.NONZERO_EXIT
    assert legacy("API Error: 529", exit_code=0) is FailureKind.AGENT_ERROR
    assert legacy("boom", exit_code=-1) is FailureKind.UNKNOWN
    assert legacy(None) is FailureKind.UNKNOWN

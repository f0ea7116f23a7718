"""Unit tests of the quality gates and the test-report verdict parser."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.kernel.gates import (
    COSTLY_FACTS,
    GATES,
    QG_CHECKS,
    Outcome,
    StageFacts,
    Verdict,
    _parse_tests_verdict,
    check_adr_present,
    check_brd_present,
    check_code_committed,
    check_deploy_ready,
    check_merged,
    check_staging_passed,
    check_tests_passed,
    facts_needed,
    run_gates,
)
from orchestrator.kernel.gates import TestsVerdict as ParsedReport  # pytest would collect Test*
from orchestrator.kernel.stages import JOB_STAGES

REPORT = "13-test-report.md"
PASSING_REPORT = "# Test report\n\nresult: PASS\nstatus: PASS\nexit_code: 0\n"
FIELDS = ("result", "status", "exit_code")
HYPOTHESIS = settings(max_examples=200, deadline=None)


def facts(stage: str = "testing", **kwargs: object) -> StageFacts:
    return StageFacts(work_item="WI-1", stage=stage, **kwargs)  # type: ignore[arg-type]


def report(text: str) -> StageFacts:
    return facts(artifacts={REPORT: text})


# --- simple gates -----------------------------------------------------------------------------


def test_verdict_passed_only_for_pass() -> None:
    assert Verdict(Outcome.PASS, "ok").passed
    assert not Verdict(Outcome.FAIL, "no").passed
    assert not Verdict(Outcome.DEFER, "later").passed


def test_brd_missing_fails() -> None:
    verdict = check_brd_present(facts("analysis"))
    assert verdict.outcome is Outcome.FAIL
    assert verdict.reason == "01-brd.md is missing"
    assert verdict.gate == "brd_present"


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        ("", False),
        ("x" * 39, False),
        ("   \n" + "x" * 39 + "\n\n   ", False),  # padding does not count
        ("x" * 40, True),
        ("# Requirements\n\nThe user can export a report as CSV.\n", True),
    ],
)
def test_brd_must_be_long_enough(text: str, passed: bool) -> None:
    verdict = check_brd_present(facts("analysis", artifacts={"01-brd.md": text}))
    assert verdict.passed is passed
    if not passed:
        assert "too short" in verdict.reason


@pytest.mark.parametrize(
    ("artifacts", "passed"),
    [
        ({}, False),
        ({"01-brd.md": "x" * 100}, False),
        ({"06-adr/ADR-001-storage.md": "   \n"}, False),  # empty ADR
        ({"06-adr/ADR-001-storage.txt": "We use SQLite."}, False),  # not markdown
        ({"adr/ADR-001-storage.md": "We use SQLite."}, False),  # wrong directory
        ({"06-adr/ADR-001-storage.md": "We use SQLite."}, True),
    ],
)
def test_adr_present(artifacts: dict[str, str], passed: bool) -> None:
    verdict = check_adr_present(facts("architecture", artifacts=artifacts))
    assert verdict.passed is passed
    assert verdict.gate == "adr_present"


def test_adr_reason_lists_the_records_in_order() -> None:
    artifacts = {"06-adr/ADR-002-b.md": "b", "06-adr/ADR-001-a.md": "a", "06-adr/x.md": ""}
    verdict = check_adr_present(facts("architecture", artifacts=artifacts))
    assert verdict.reason == "2 ADR(s): 06-adr/ADR-001-a.md, 06-adr/ADR-002-b.md"


@pytest.mark.parametrize(
    ("changed", "passed"),
    [
        ((), False),
        (("docs/work-items/WI-1/01-brd.md", "docs/work-items/WI-1/06-adr/a.md"), False),
        (("docs/work-items/WI-1/01-brd.md", "src/app.py"), True),
        (("docs/README.md",), True),  # docs outside the work items are a change too
        (("docs/work-items-old/x.py",), True),
    ],
)
def test_code_committed(changed: tuple[str, ...], passed: bool) -> None:
    verdict = check_code_committed(facts("development", changed_paths=changed))
    assert verdict.passed is passed
    assert verdict.gate == "code_committed"


def test_code_committed_reason_shows_at_most_five_paths() -> None:
    changed = tuple(f"src/m{i}.py" for i in range(7))
    verdict = check_code_committed(facts("development", changed_paths=changed))
    assert verdict.reason == (
        "7 file(s) changed: src/m0.py, src/m1.py, src/m2.py, src/m3.py, src/m4.py …"
    )
    verdict = check_code_committed(facts("development", changed_paths=changed[:2]))
    assert verdict.reason == "2 file(s) changed: src/m0.py, src/m1.py"


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        (None, False),
        ("result: PASS\n", True),
        ("result: SKIPPED\n(no staging configured)\n", True),
        ("- **result**: pass\n", True),
        ("result: FAIL\n", False),
        ("Staging went fine.\n", False),
        ("result: PASSED\n", False),
    ],
)
def test_staging_passed(text: str | None, passed: bool) -> None:
    artifacts = {} if text is None else {"14-staging-report.md": text}
    verdict = check_staging_passed(facts("deploy-staging", artifacts=artifacts))
    assert verdict.passed is passed
    assert verdict.gate == "staging_passed"


def test_staging_reason_says_what_was_found() -> None:
    missing = check_staging_passed(facts("deploy-staging", artifacts={}))
    assert missing.reason == "14-staging-report.md is missing"
    no_result = check_staging_passed(
        facts("deploy-staging", artifacts={"14-staging-report.md": "hello"})
    )
    assert no_result.reason == "14-staging-report.md: result missing"


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        (None, False),
        ("result: FAIL\n", False),
        ("ready\n", False),
        ("result: PASS\n", True),
    ],
)
def test_deploy_ready(text: str | None, passed: bool) -> None:
    artifacts = {} if text is None else {"15-deploy-report.md": text}
    verdict = check_deploy_ready(facts("deploy", artifacts=artifacts))
    assert verdict.passed is passed
    assert verdict.gate == "deploy_ready"


@pytest.mark.parametrize("merged", [False, True])
def test_merged_gate_reads_the_merged_fact(merged: bool) -> None:
    verdict = check_merged(facts("deploy", merged=merged))
    assert verdict.passed is merged
    assert ("not merged" in verdict.reason) is not merged


def test_every_named_gate_reports_its_own_name() -> None:
    for name, gate in GATES.items():
        assert gate(facts()).gate == name


def test_every_job_stage_has_default_gates_from_the_named_gates() -> None:
    assert set(QG_CHECKS) == set(JOB_STAGES)
    for gates in QG_CHECKS.values():
        assert gates
        assert set(gates) <= set(GATES.values())


def test_default_gates_fail_on_empty_facts() -> None:
    for stage, gates in QG_CHECKS.items():
        assert not run_gates(gates, facts(stage)).passed, stage


# --- run_gates --------------------------------------------------------------------------------


def test_run_gates_without_gates_passes() -> None:
    verdict = run_gates([], facts())
    assert verdict == Verdict(Outcome.PASS, "no gates configured", "all")


def test_run_gates_stops_at_the_first_gate_that_does_not_pass() -> None:
    called: list[str] = []

    def gate(name: str, outcome: Outcome) -> object:
        def run(_: StageFacts) -> Verdict:
            called.append(name)
            return Verdict(outcome, f"{name} said {outcome}", name)

        return run

    gates = [gate("a", Outcome.PASS), gate("b", Outcome.DEFER), gate("c", Outcome.FAIL)]
    verdict = run_gates(gates, facts())  # type: ignore[arg-type]
    assert verdict == Verdict(Outcome.DEFER, "b said defer", "b")
    assert called == ["a", "b"]


def test_run_gates_joins_the_reasons_when_all_pass() -> None:
    brd = {"01-brd.md": "x" * 50, "06-adr/ADR-001.md": "decision"}
    verdict = run_gates([check_brd_present, check_adr_present], facts(artifacts=brd))
    assert verdict.passed
    assert verdict.gate == "all"
    assert verdict.reason == "01-brd.md present; 1 ADR(s): 06-adr/ADR-001.md"


# --- the test report: examples ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        PASSING_REPORT,
        "result: PASS\nstatus: PASS\nexit_code: 0",
        "status: pass\nresult: Pass\nexit_code: 0\n",
        "Result: PASS\nSTATUS: PASS\nExit_Code: 0\n",
        "- result: PASS\n- status: PASS\n- exit_code: 0\n",
        "* **result**: PASS\n* **status**: PASS\n* **exit_code**: 0\n",
        "> result: `PASS`\n> status: **PASS**\n> exit_code: `0`\n",
        "result : PASS\nstatus:PASS\nexit_code:   0   \n",
        "result: PASS\nresult: PASS\nstatus: PASS\nexit_code: 0\n",  # agreeing duplicate
        "## Summary\n\n| suite | ok |\n\nresult: PASS  (42 tests)\nstatus: PASS\nexit_code: 0\n",
        "results: FAIL\nexit code: 1\nresult: PASS\nstatus: PASS\nexit_code: 0\n",  # not fields
    ],
)
def test_well_formed_passing_reports_pass(text: str) -> None:
    verdict = check_tests_passed(report(text))
    assert verdict.passed, verdict.reason
    assert verdict.gate == "tests_passed"


# The parser stops the value at the emphasis marker, so `**result:** PASS` (colon inside
# the bold) reads an empty value and the field counts as missing.
@pytest.mark.parametrize(
    "text",
    [
        "- **result:** PASS\n- **status:** PASS\n- **exit_code:** 0\n",
        "- **result:** PASS\nstatus: PASS\nexit_code: 0\n",
    ],
)
def test_bold_field_with_colon_inside_passes(text: str) -> None:
    assert check_tests_passed(report(text)).passed


# The value stops at `_`, `*`, `` ` `` or `|`, so a longer word that merely starts with
# PASS or 0 is read as PASS or 0.
@pytest.mark.parametrize(
    "text",
    [
        "result: PASS_WITH_FAILURES\nstatus: PASS\nexit_code: 0\n",
        "result: PASS\nstatus: PASS\nexit_code: 0_1\n",
        "result: PASS|FAIL\nstatus: PASS\nexit_code: 0\n",
    ],
)
def test_value_with_a_suffix_does_not_pass(text: str) -> None:
    assert not check_tests_passed(report(text)).passed


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        ("result: PASS\nstatus: PASS\nexit_code: 1\n", "exit_code 1"),
        ("result: PASS\nstatus: PASS\nexit_code: 0x0\n", "not an integer ('0x0')"),
        ("result: PASS\nstatus: PASS\nexit_code: 0.0\n", "not an integer"),
        ("result: PASS\nstatus: PASS\nexit_code: zero\n", "not an integer"),
        ("result: PASS\nstatus: PASS\nexit_code: 1234567\n", "not an integer"),
        ("result: PASS\nresult: FAIL\nstatus: PASS\nexit_code: 0\n", "'result:' is given twice"),
        ("result: PASS\nstatus: PASS\nexit_code: 0\nexit_code: 1\n", "'exit_code:' is given"),
        ("result: PASS\nstatus: FAIL\nexit_code: 0\n", "status FAIL"),
        ("result: FAIL\nstatus: PASS\nexit_code: 0\n", "result FAIL"),
        ("result: PASSED\nstatus: PASS\nexit_code: 0\n", "result PASSED"),
        ("status: PASS\nexit_code: 0\n", "'result:' is missing"),
        ("result: PASS\nexit_code: 0\n", "'status:' is missing"),
        ("result: PASS\nstatus: PASS\n", "'exit_code:' is missing"),
        ("result:\nstatus: PASS\nexit_code: 0\n", "'result:' is missing"),
        ("All tests passed!\n", "'result:' is missing"),
        ("", "'exit_code:' is missing"),
        ("The result: PASS\nstatus: PASS\nexit_code: 0\n", "'result:' is missing"),
    ],
)
def test_bad_reports_fail_with_a_reason(text: str, reason_part: str) -> None:
    verdict = check_tests_passed(report(text))
    assert verdict.outcome is Outcome.FAIL
    assert reason_part in verdict.reason
    assert verdict.reason.startswith(f"{REPORT}: ")


def test_missing_report_fails() -> None:
    verdict = check_tests_passed(facts(artifacts={"13-test-report.txt": PASSING_REPORT}))
    assert verdict == Verdict(Outcome.FAIL, f"{REPORT} is missing", "tests_passed")


def test_parse_reads_the_three_fields() -> None:
    text = "result: fail\nstatus: Pass\nexit_code: -3\n"
    assert _parse_tests_verdict(text) == ParsedReport("FAIL", "PASS", -3, ())


@pytest.mark.parametrize(("raw", "code"), [("007", 7), ("+2", 2), ("-1", -1), ("999999", 999999)])
def test_parse_reads_decimal_exit_codes(raw: str, code: int) -> None:
    verdict = _parse_tests_verdict(f"result: PASS\nstatus: PASS\nexit_code: {raw}\n")
    assert verdict == ParsedReport("PASS", "PASS", code, ())
    assert not verdict.passed


# --- the test report: properties -------------------------------------------------------------


@HYPOTHESIS
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text: str) -> None:
    verdict = _parse_tests_verdict(text)
    assert isinstance(verdict, ParsedReport)
    assert check_tests_passed(report(text)).outcome in (Outcome.PASS, Outcome.FAIL)


FIELD_LIKE_LINES = st.builds(
    lambda prefix, key, sep, value: f"{prefix}{key}{sep}{value}",
    st.sampled_from(["", "- ", "* ", "> ", "**", "`", "| ", "\t"]),
    st.sampled_from(["result", "status", "exit_code", "RESULT", "Exit_Code", "status**"]),
    st.sampled_from([":", ": ", " : ", ":** ", "`: "]),
    st.text() | st.from_regex(r"[+-]?[0-9]{1,8}", fullmatch=True),
)


@HYPOTHESIS
@given(st.lists(st.one_of(st.text(), FIELD_LIKE_LINES), max_size=12))
def test_parse_never_raises_on_field_like_lines(lines: list[str]) -> None:
    text = "\n".join(lines)
    verdict = _parse_tests_verdict(text)
    assert isinstance(verdict, ParsedReport)
    assert check_tests_passed(report(text)).outcome in (Outcome.PASS, Outcome.FAIL)


# Value words the parser reads whole: no whitespace and none of * _ ` |.
ASCII_WORDS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+.,:!()",
    max_size=8,
)
WORD_VALUES = st.one_of(
    st.sampled_from(["PASS", "pass", "Pass", "FAIL", "PASSED", "SKIPPED", "P4SS", "PASS,", ""]),
    ASCII_WORDS,
)
# Random exit codes are never integers, so "exactly 0" is the whole passing rule.
EXIT_VALUES = st.one_of(
    st.sampled_from(["0", "1", "-1", "2", "127", "0x0", "0.0", "O", "zero", "0,", ""]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-.,", max_size=8),
)
KEY_SPELLINGS = {
    "result": ["result", "Result", "RESULT"],
    "status": ["status", "Status", "STATUS"],
    "exit_code": ["exit_code", "Exit_Code", "EXIT_CODE"],
}
# Decorations the report format allows around a field (see gates._VERDICT_FIELD).
PREFIXES = ["", "- ", "* ", "> ", "  ", "| ", "- > "]
KEY_STYLES = ["{k}", "**{k}**", "`{k}`", "_{k}_", "__{k}__"]
SEPARATORS = [":", ": ", " : ", ":   "]
VALUE_STYLES = ["{v}", "**{v}**", "`{v}`", "{v}  ", "{v} (see log)"]
NOISE = [
    "",
    "# Test report",
    "Summary: all good",
    "results: FAIL",  # not the field `result`
    "exit code: 1",  # not the field `exit_code`
    "result_code: 2",
    "The status is PASS",
    "statuses: FAIL",
    "```",
]


@dataclass(frozen=True)
class Field:
    key: str
    value: str
    line: str


@st.composite
def field_lines(draw: st.DrawFn, key: str, value: str | None = None) -> Field:
    if value is None:
        value = draw(EXIT_VALUES if key == "exit_code" else WORD_VALUES)
    spelled = draw(st.sampled_from(KEY_SPELLINGS[key]))
    line = (
        draw(st.sampled_from(PREFIXES))
        + draw(st.sampled_from(KEY_STYLES)).format(k=spelled)
        + draw(st.sampled_from(SEPARATORS))
        + (draw(st.sampled_from(VALUE_STYLES)).format(v=value) if value else "")
    )
    return Field(key, value, line)


@st.composite
def reports(draw: st.DrawFn) -> tuple[str, list[Field]]:
    items: list[Field | str] = []
    for key in FIELDS:
        # Missing (0), once (mostly), or duplicated, possibly with conflicting values.
        count = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
        items.extend(draw(field_lines(key)) for _ in range(count))
        if count > 1 and draw(st.booleans()):
            # An agreeing duplicate: the same value in another decoration.
            first = next(i for i in items if isinstance(i, Field) and i.key == key)
            items.append(draw(field_lines(key, first.value)))
    items.extend(draw(st.lists(st.sampled_from(NOISE), max_size=4)))
    ordered = draw(st.permutations(items))
    text = "\n".join(i.line if isinstance(i, Field) else i for i in ordered)
    return text, [i for i in ordered if isinstance(i, Field)]


def expected_to_pass(fields: list[Field]) -> bool:
    """The report contract, written independently of the parser."""
    for key, wanted in (("result", "PASS"), ("status", "PASS"), ("exit_code", "0")):
        values = [f.value for f in fields if f.key == key]
        if not values or any(v != values[0] for v in values):
            return False  # missing, or duplicated with conflicting values
        if key == "exit_code":
            if values[0] != wanted:
                return False
        elif values[0].upper() != wanted:
            return False
    return True


@HYPOTHESIS
@given(reports())
def test_report_passes_iff_result_status_and_exit_code_agree(
    generated: tuple[str, list[Field]],
) -> None:
    text, fields = generated
    verdict = check_tests_passed(report(text))
    assert verdict.passed is expected_to_pass(fields), (text, verdict.reason)
    assert verdict.outcome in (Outcome.PASS, Outcome.FAIL)
    if not verdict.passed:
        assert verdict.reason.startswith(f"{REPORT}: ")


@HYPOTHESIS
@given(reports(), st.sampled_from(FIELDS), st.sampled_from(["FAIL", "1", "PASSED"]))
def test_a_conflicting_duplicate_never_passes(
    generated: tuple[str, list[Field]], key: str, other: str
) -> None:
    text, _ = generated
    conflicting = f"{text}\n{key}: PASS\n{key}: 0\n{key}: {other}\n"
    assert not check_tests_passed(report(conflicting)).passed


# --- which facts a gate needs ----------------------------------------------------------

ARTIFACT_TEXTS = st.sampled_from(
    ["", "result: PASS\n", "result: FAIL\n", PASSING_REPORT, "# BRD\n" + "x" * 60, "ok"]
)
ARTIFACT_NAMES = st.sampled_from(
    [
        "01-brd.md",
        "06-adr/0001-choice.md",
        REPORT,
        "14-staging-report.md",
        "15-deploy-report.md",
    ]
)


@HYPOTHESIS
@given(
    artifacts=st.dictionaries(ARTIFACT_NAMES, ARTIFACT_TEXTS, max_size=5),
    changed=st.lists(st.sampled_from(["src/a.py", "docs/work-items/WI-1/01-brd.md"]), max_size=2),
    merged=st.booleans(),
)
def test_a_gate_reads_no_costly_fact_it_does_not_declare(
    artifacts: dict[str, str], changed: list[str], merged: bool
) -> None:
    """The finalizer collects changed paths and "merged" (git processes) only for the
    gates that declare them (facts_needed): a gate whose verdict moved with a fact it
    does not declare would be judged on a default instead."""
    full = facts("development", artifacts=artifacts, changed_paths=tuple(changed), merged=merged)
    for gate in GATES.values():
        needed = facts_needed([gate])
        cheap = facts(
            "development",
            artifacts=artifacts,
            changed_paths=tuple(changed) if "changed_paths" in needed else (),
            merged=merged if "merged" in needed else False,
        )
        assert gate(cheap) == gate(full), gate.__name__


def test_a_gate_the_table_does_not_know_gets_every_costly_fact() -> None:
    def custom(_facts: StageFacts) -> Verdict:
        return Verdict(Outcome.PASS, "custom", "custom")

    assert facts_needed([custom]) == COSTLY_FACTS
    assert facts_needed([check_brd_present, check_tests_passed]) == frozenset()
    assert facts_needed([check_code_committed, check_merged]) == COSTLY_FACTS

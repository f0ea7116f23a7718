"""Unit tests of decide_after_job: advance, retry, roll back or fail."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.kernel.decisions import (
    ENVIRONMENT,
    Advance,
    Decision,
    Fail,
    Limits,
    Retry,
    Rollback,
    decide_after_job,
)
from orchestrator.kernel.gates import Outcome, Verdict
from orchestrator.kernel.stages import (
    JOB_STAGES,
    ROLLBACK_TARGET,
    SKIPPABLE_STAGES,
    Pipeline,
    is_legal_transition,
)

LIMITS = Limits(max_attempts=3, max_rollbacks=2, retry_backoff_s=5.0)
PASSED = Verdict(Outcome.PASS, "all good", "g")
FAILED = Verdict(Outcome.FAIL, "tests failed: 3 of 40", "tests_passed")
DEFERRED = Verdict(Outcome.DEFER, "git timed out", "g")
ROLLBACK_STAGES = sorted(ROLLBACK_TARGET)
RETRY_STAGES = sorted(JOB_STAGES - set(ROLLBACK_TARGET))


def decide(
    stage: str = "development",
    *,
    pipeline: Pipeline | None = None,
    job_error: str | None = None,
    verdict: Verdict | None = PASSED,
    attempt: int = 1,
    rollback_count: int = 0,
    limits: Limits = LIMITS,
) -> Decision:
    return decide_after_job(
        stage=stage,
        pipeline=pipeline or Pipeline(),
        job_error=job_error,
        verdict=verdict,
        attempt=attempt,
        rollback_count=rollback_count,
        limits=limits,
    )


def test_default_limits() -> None:
    assert Limits() == Limits(max_attempts=3, max_rollbacks=2, retry_backoff_s=5.0)


# --- advance ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("analysis", "brd-approval"),
        ("architecture", "development"),
        ("development", "testing"),
        ("testing", "deploy-staging"),
        ("deploy-staging", "deploy"),
        ("deploy", "done"),
    ],
)
def test_pass_advances_to_the_next_stage(stage: str, expected: str) -> None:
    assert decide(stage, verdict=PASSED) == Advance(expected, "all good")


def test_pass_advances_over_skipped_stages() -> None:
    pipeline = Pipeline(frozenset({"testing", "deploy-staging"}))
    assert decide("development", pipeline=pipeline) == Advance("deploy", "all good")


def test_pass_on_the_last_attempt_and_rollback_still_advances() -> None:
    decision = decide("testing", attempt=3, rollback_count=2)
    assert decision == Advance("deploy-staging", "all good")


# --- retry and fail -----------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(JOB_STAGES))
def test_job_error_retries_whatever_the_verdict(stage: str) -> None:
    decision = decide(stage, job_error="exit code 2", verdict=PASSED, attempt=1)
    assert decision == Retry(stage, 2, 5.0, "exit code 2")


def test_missing_verdict_retries() -> None:
    decision = decide("analysis", verdict=None, attempt=2)
    assert decision == Retry("analysis", 3, 10.0, "no verdict from the gates")


@pytest.mark.parametrize("stage", sorted(JOB_STAGES))
def test_deferred_gate_retries_even_in_rollback_stages(stage: str) -> None:
    decision = decide(stage, verdict=DEFERRED)
    assert decision == Retry(stage, 2, 5.0, "gate deferred: git timed out")


@pytest.mark.parametrize("stage", RETRY_STAGES)
def test_failed_gate_before_testing_retries_with_the_verdict_as_feedback(stage: str) -> None:
    assert decide(stage, verdict=FAILED) == Retry(stage, 2, 5.0, FAILED.reason)


def test_backoff_doubles_with_each_attempt() -> None:
    limits = Limits(max_attempts=10, max_rollbacks=0, retry_backoff_s=1.5)
    delays = [
        decide(job_error="boom", attempt=attempt, limits=limits).delay_s  # type: ignore[union-attr]
        for attempt in range(1, 6)
    ]
    assert delays == [1.5, 3.0, 6.0, 12.0, 24.0]


def test_zero_backoff_retries_at_once() -> None:
    limits = Limits(max_attempts=5, retry_backoff_s=0)
    assert decide(job_error="boom", attempt=3, limits=limits) == Retry("development", 4, 0, "boom")


@pytest.mark.parametrize(
    ("job_error", "verdict", "why"),
    [
        ("timed out after 3600 s", PASSED, "timed out after 3600 s"),
        (None, None, "no verdict from the gates"),
        (None, DEFERRED, "gate deferred: git timed out"),
        (None, FAILED, FAILED.reason),
    ],
)
def test_spent_attempts_fail_with_the_reason(
    job_error: str | None, verdict: Verdict | None, why: str
) -> None:
    decision = decide("development", job_error=job_error, verdict=verdict, attempt=3)
    assert decision == Fail(f"development failed 3 time(s) (max_attempts=3): {why}")


def test_one_attempt_allowed_means_no_retry() -> None:
    limits = Limits(max_attempts=1)
    assert isinstance(decide(job_error="boom", attempt=1, limits=limits), Fail)


def test_last_retry_is_attempt_max_attempts() -> None:
    assert decide(job_error="boom", attempt=2) == Retry("development", 3, 10.0, "boom")
    assert isinstance(decide(job_error="boom", attempt=3), Fail)


# --- rollback -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ROLLBACK_STAGES)
@pytest.mark.parametrize("rollback_count", [0, 1])
def test_failed_gate_from_testing_on_rolls_back_to_development(
    stage: str, rollback_count: int
) -> None:
    decision = decide(stage, verdict=FAILED, rollback_count=rollback_count)
    assert decision == Rollback("development", FAILED.reason)


@pytest.mark.parametrize("stage", ROLLBACK_STAGES)
def test_rollback_does_not_spend_attempts(stage: str) -> None:
    decision = decide(stage, verdict=FAILED, attempt=3, rollback_count=0)
    assert decision == Rollback("development", FAILED.reason)


@pytest.mark.parametrize("stage", ROLLBACK_STAGES)
@pytest.mark.parametrize("rollback_count", [2, 5])
def test_spent_rollbacks_fail_with_the_reason(stage: str, rollback_count: int) -> None:
    decision = decide(stage, verdict=FAILED, rollback_count=rollback_count)
    assert decision == Fail(
        f"{stage} gate failed after {rollback_count} rollback(s) (max_rollbacks=2): {FAILED.reason}"
    )


def test_zero_rollbacks_allowed_fails_at_once() -> None:
    decision = decide("testing", verdict=FAILED, limits=Limits(max_rollbacks=0))
    assert isinstance(decision, Fail)
    assert "max_rollbacks=0" in decision.reason


# --- properties ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Situation:
    stage: str
    pipeline: Pipeline
    job_error: str | None
    verdict: Verdict | None
    attempt: int
    rollback_count: int
    limits: Limits

    def decide(self) -> Decision:
        return decide_after_job(**vars(self))


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    stage = draw(st.sampled_from(sorted(JOB_STAGES)))
    skippable = sorted(SKIPPABLE_STAGES - {stage})
    limits = Limits(
        max_attempts=draw(st.integers(1, 10)),
        max_rollbacks=draw(st.integers(0, 10)),
        retry_backoff_s=draw(st.floats(0, 600, allow_nan=False)),
    )
    return Situation(
        stage=stage,
        pipeline=Pipeline(frozenset(draw(st.sets(st.sampled_from(skippable))))),
        job_error=draw(st.none() | st.text(min_size=1, max_size=20)),
        verdict=draw(
            st.none() | st.builds(Verdict, st.sampled_from(Outcome), st.text(max_size=20))
        ),
        # The engine never asks past the budget, but the kernel must stay sane if it did.
        attempt=draw(st.integers(1, limits.max_attempts + 2)),
        rollback_count=draw(st.integers(0, limits.max_rollbacks + 2)),
        limits=limits,
    )


@settings(max_examples=300, deadline=None)
@given(situations())
def test_decisions_respect_the_budgets_and_the_graph(situation: Situation) -> None:
    decision = situation.decide()
    stage, pipeline, limits = situation.stage, situation.pipeline, situation.limits
    verdict = situation.verdict if situation.job_error is None else None
    match decision:
        case Retry():
            assert decision.stage == stage
            assert decision.attempt == situation.attempt + 1
            assert decision.attempt <= limits.max_attempts
            assert decision.delay_s == limits.retry_backoff_s * 2 ** (situation.attempt - 1)
            assert decision.delay_s >= 0
        case Rollback():
            assert stage in ROLLBACK_TARGET
            assert decision.to_stage == ROLLBACK_TARGET[stage] == "development"
            assert verdict is not None
            assert verdict.outcome is Outcome.FAIL
            assert decision.reason == verdict.reason
            assert situation.rollback_count < limits.max_rollbacks
            assert is_legal_transition(stage, decision.to_stage, pipeline)
        case Advance():
            assert verdict is not None
            assert verdict.outcome is Outcome.PASS
            assert decision.to_stage == pipeline.next_stage(stage)
            assert is_legal_transition(stage, decision.to_stage, pipeline)
        case Fail():
            assert decision.reason
            assert (
                situation.attempt >= limits.max_attempts
                or situation.rollback_count >= limits.max_rollbacks
            )
        case _:
            pytest.fail(f"not a decision: {decision!r}")


@settings(max_examples=200, deadline=None)
@given(situations())
def test_a_passed_job_always_advances(situation: Situation) -> None:
    passed = replace(situation, job_error=None, verdict=PASSED)
    assert isinstance(passed.decide(), Advance)


@settings(max_examples=200, deadline=None)
@given(situations())
def test_a_job_error_never_advances_or_rolls_back(situation: Situation) -> None:
    crashed = replace(situation, job_error=situation.job_error or "crashed")
    assert isinstance(crashed.decide(), Retry | Fail)


@given(
    stage=st.sampled_from(sorted(JOB_STAGES)),
    verdict=st.sampled_from([None, PASSED, FAILED, DEFERRED]),
    attempt=st.integers(min_value=1, max_value=5),
    rollback_count=st.integers(min_value=0, max_value=5),
)
def test_an_environment_cause_always_fails_for_a_person_never_retries_or_rolls_back(
    stage: str, verdict: Verdict | None, attempt: int, rollback_count: int
) -> None:
    decision = decide_after_job(
        stage=stage,
        pipeline=Pipeline(),
        job_error="the test command could not start: no-such-tool",
        verdict=verdict,
        attempt=attempt,
        rollback_count=rollback_count,
        limits=LIMITS,
        cause=ENVIRONMENT,
        work_item="T-9",
    )
    assert isinstance(decision, Fail)
    assert decision.cause == ENVIRONMENT
    assert "no-such-tool" in decision.reason
    assert "`orch task retry T-9`" in decision.reason


def test_a_cause_without_a_job_error_changes_nothing() -> None:
    decision = decide_after_job(
        stage="testing",
        pipeline=Pipeline(),
        job_error=None,
        verdict=FAILED,
        attempt=1,
        rollback_count=0,
        limits=LIMITS,
        cause=ENVIRONMENT,
    )
    assert decision == Rollback("development", FAILED.reason)

"""The table of human actions (kernel/actions.py) against the stage graph it is read from.

Seen failing with the table loosened in turn: approve offered on a failed task, retry
offered on a task that has not failed, cancel offered on a done task, and reject
offered where the repository skips analysis.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.kernel.actions import (
    APPROVE,
    CANCEL,
    HUMAN_ACTIONS,
    REJECT,
    RETRY,
    ROLLBACK,
    allowed_actions,
)
from orchestrator.kernel.stages import (
    CANCELLED,
    HUMAN_GATE_STAGES,
    JOB_STAGES,
    REJECT_TARGET,
    ROLLBACK_TARGET,
    SKIPPABLE_STAGES,
    STAGE_TRANSITIONS,
    TERMINAL_STAGES,
    Pipeline,
)

stages = st.sampled_from(sorted(STAGE_TRANSITIONS))
pipelines = st.frozensets(st.sampled_from(sorted(SKIPPABLE_STAGES))).map(Pipeline)


@given(stage=stages, failed=st.booleans(), pipeline=pipelines)
def test_every_allowed_action_is_a_legal_move_of_the_stage_graph(
    stage: str, failed: bool, pipeline: Pipeline
) -> None:
    allowed = allowed_actions(stage, failed=failed, pipeline=pipeline)
    assert set(allowed) <= set(HUMAN_ACTIONS)
    assert list(allowed) == [a for a in HUMAN_ACTIONS if a in allowed]  # the page's order
    moves = STAGE_TRANSITIONS[stage]
    if CANCEL in allowed:
        assert CANCELLED in moves
    if REJECT in allowed:
        assert REJECT_TARGET[stage] in moves
        assert REJECT_TARGET[stage] not in pipeline.skipped
    if ROLLBACK in allowed:
        assert ROLLBACK_TARGET[stage] in moves
    if APPROVE in allowed:
        assert any(target not in (CANCELLED, REJECT_TARGET.get(stage)) for target in moves)


@given(stage=stages, failed=st.booleans())
def test_the_actions_follow_the_tasks_state(stage: str, failed: bool) -> None:
    allowed = set(allowed_actions(stage, failed=failed))
    assert (APPROVE in allowed) == (stage in HUMAN_GATE_STAGES and not failed)
    assert (REJECT in allowed) == (stage in REJECT_TARGET and not failed)
    assert (RETRY in allowed) == (failed and stage in JOB_STAGES)
    assert (CANCEL in allowed) == (stage not in TERMINAL_STAGES)
    assert (ROLLBACK in allowed) == (stage in ROLLBACK_TARGET)


def test_nothing_is_offered_on_an_ended_task() -> None:
    for stage in TERMINAL_STAGES:
        assert allowed_actions(stage, failed=False) == ()
        assert allowed_actions(stage, failed=True) == ()


def test_a_repository_that_skips_analysis_cannot_reject_its_brd() -> None:
    skipping = Pipeline(frozenset({"analysis"}))
    assert allowed_actions("brd-approval", failed=False, pipeline=skipping) == (APPROVE, CANCEL)
    assert allowed_actions("brd-approval", failed=False) == (APPROVE, REJECT, CANCEL)

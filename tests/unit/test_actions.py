"""The kernel's table of human actions: what a view offers is what the service allows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.kernel.actions import Action, allowed_actions, refusal
from orchestrator.kernel.stages import (
    HUMAN_GATE_STAGES,
    JOB_STAGES,
    ROLLBACK_TARGET,
    STAGE_TRANSITIONS,
    TERMINAL_STAGES,
)

stages = st.sampled_from(sorted(STAGE_TRANSITIONS))
# Hostile stage names too: the table must refuse, never raise.
any_stage = st.one_of(stages, st.text(max_size=30))


@given(stage=any_stage, failed=st.booleans())
def test_allowed_actions_are_exactly_those_without_a_refusal(stage: str, failed: bool) -> None:
    offered = set(allowed_actions(stage, failed=failed))
    for action in Action:
        why = refusal(action, stage, failed)
        assert (why is None) == (action in offered)
        if why is not None:
            assert why.startswith(("is ", "has "))


@given(stage=stages, failed=st.booleans())
def test_the_table_matches_the_stage_graph(stage: str, failed: bool) -> None:
    offered = set(allowed_actions(stage, failed=failed))
    assert (Action.APPROVE in offered) == (stage in HUMAN_GATE_STAGES and not failed)
    assert (Action.RETRY in offered) == (failed and stage in JOB_STAGES)
    assert (Action.ROLLBACK in offered) == (stage in ROLLBACK_TARGET)
    assert (Action.CANCEL in offered) == (stage not in TERMINAL_STAGES)


def test_an_ended_task_offers_nothing() -> None:
    for stage in TERMINAL_STAGES:
        assert allowed_actions(stage, failed=False) == ()
        assert allowed_actions(stage, failed=True) == ()


def test_the_gate_offers_approve_reject_and_cancel() -> None:
    assert allowed_actions("brd-approval", failed=False) == (
        Action.APPROVE,
        Action.REJECT,
        Action.CANCEL,
    )
    assert refusal(Action.APPROVE, "analysis", failed=False) == (
        "is in analysis; approve applies at brd-approval"
    )

"""Unit tests of the stage graph: every legal and illegal move, skips, labels."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestrator.errors import ConflictError, IllegalTransitionError
from orchestrator.kernel.stages import (
    CANCELLED,
    CREATED,
    DONE,
    HUMAN_GATE_STAGES,
    REJECT_TARGET,
    ROLLBACK_TARGET,
    SKIPPABLE_STAGES,
    STAGE_LABELS,
    STAGE_ORDER,
    STAGE_TRANSITIONS,
    TERMINAL_STAGES,
    Pipeline,
    check_transition,
    is_legal_transition,
    stage_label,
)

ALL_STAGES = tuple(STAGE_TRANSITIONS.keys())
ALL_PAIRS = list(itertools.product(ALL_STAGES, ALL_STAGES))
LEGAL_PAIRS = [(a, b) for a, b in ALL_PAIRS if b in STAGE_TRANSITIONS[a]]
ILLEGAL_PAIRS = [(a, b) for a, b in ALL_PAIRS if b not in STAGE_TRANSITIONS[a]]
LANGUAGES = ("en", "ru")
UNSKIPPABLE = ("created", "development", "done", "cancelled")
ALL_SKIP_SETS = [
    frozenset(combo)
    for size in range(len(SKIPPABLE_STAGES) + 1)
    for combo in itertools.combinations(sorted(SKIPPABLE_STAGES), size)
]


def _pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


# --- the graph itself -------------------------------------------------------------------


def test_the_graph_is_closed_over_its_own_stages() -> None:
    for stage, targets in STAGE_TRANSITIONS.items():
        assert set(targets) <= set(STAGE_TRANSITIONS), stage
        assert stage not in targets, f"{stage} loops onto itself"


def test_stage_order_is_the_forward_path_of_the_graph() -> None:
    assert set(STAGE_ORDER) == set(STAGE_TRANSITIONS) - {CANCELLED}
    assert STAGE_ORDER[0] == CREATED
    assert STAGE_ORDER[-1] == DONE
    for current, following in itertools.pairwise(STAGE_ORDER):
        assert following in STAGE_TRANSITIONS[current]


def test_terminal_stages_have_no_moves_and_every_other_stage_can_be_cancelled() -> None:
    for stage, targets in STAGE_TRANSITIONS.items():
        if stage in TERMINAL_STAGES:
            assert targets == ()
        else:
            assert CANCELLED in targets, stage


def test_only_rollbacks_and_rejects_move_backwards_and_only_to_their_target() -> None:
    for current, target in LEGAL_PAIRS:
        if target in STAGE_ORDER and STAGE_ORDER.index(target) < STAGE_ORDER.index(current):
            assert target in (ROLLBACK_TARGET.get(current), REJECT_TARGET.get(current))


def test_a_rejected_brd_goes_back_to_the_analysis_that_wrote_it() -> None:
    assert REJECT_TARGET == {"brd-approval": "analysis"}
    check_transition("brd-approval", "analysis")
    assert is_legal_transition("brd-approval", "analysis", Pipeline(frozenset({"architecture"})))
    # Only a human gate can be rejected, and only back to the stage just before it.
    for gate, target in REJECT_TARGET.items():
        assert gate in HUMAN_GATE_STAGES
        assert STAGE_ORDER[STAGE_ORDER.index(gate) - 1] == target
    # Nothing else moves back to analysis.
    assert [a for a, b in LEGAL_PAIRS if b == "analysis"] == ["created", "brd-approval"]
    with pytest.raises(IllegalTransitionError):
        check_transition("architecture", "analysis")


# --- every pair, no skipped stages ------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), LEGAL_PAIRS, ids=map(_pair_id, LEGAL_PAIRS))
def test_legal_transition(current: str, target: str) -> None:
    assert is_legal_transition(current, target)
    assert is_legal_transition(current, target, Pipeline())
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), ILLEGAL_PAIRS, ids=map(_pair_id, ILLEGAL_PAIRS))
def test_illegal_transition(current: str, target: str) -> None:
    assert not is_legal_transition(current, target)
    assert not is_legal_transition(current, target, Pipeline())
    with pytest.raises(IllegalTransitionError) as caught:
        check_transition(current, target)
    error = caught.value
    assert (error.current, error.target) == (current, target)
    assert error.allowed == STAGE_TRANSITIONS[current]
    assert f"from '{current}' to '{target}'" in str(error)


def test_every_pair_is_covered_exactly_once() -> None:
    assert len(LEGAL_PAIRS) + len(ILLEGAL_PAIRS) == len(ALL_STAGES) ** 2
    assert len(LEGAL_PAIRS) == sum(len(t) for t in STAGE_TRANSITIONS.values())


def test_illegal_transition_error_is_a_conflict_and_names_the_allowed_moves() -> None:
    with pytest.raises(ConflictError, match=r"allowed from 'testing': deploy-staging"):
        check_transition("testing", "done")


def test_moving_out_of_a_terminal_stage_says_it_is_terminal() -> None:
    with pytest.raises(IllegalTransitionError, match=r"none \(terminal stage\)"):
        check_transition(DONE, "development")


@pytest.mark.parametrize(
    ("current", "target"),
    [("nope", "analysis"), ("created", "nope"), ("", ""), ("nope", "nope")],
)
def test_unknown_stages_are_never_legal(current: str, target: str) -> None:
    everything_skipped = Pipeline(frozenset(SKIPPABLE_STAGES))
    assert not is_legal_transition(current, target, everything_skipped)
    with pytest.raises(IllegalTransitionError) as caught:
        check_transition(current, target)
    assert caught.value.allowed == STAGE_TRANSITIONS.get(current, ())


# --- skipped stages -----------------------------------------------------------------------


def test_skipping_testing_and_staging_lets_development_jump_to_deploy() -> None:
    pipeline = Pipeline(frozenset({"testing", "deploy-staging"}))
    assert is_legal_transition("development", "deploy", pipeline)
    check_transition("development", "deploy", pipeline)
    assert not is_legal_transition("development", "done", pipeline)
    with pytest.raises(IllegalTransitionError):
        check_transition("development", "done", pipeline)
    # Without the skips, the same jump is illegal.
    assert not is_legal_transition("development", "deploy")
    with pytest.raises(IllegalTransitionError):
        check_transition("development", "deploy")


def test_skips_never_allow_backward_jumps() -> None:
    pipeline = Pipeline(frozenset(SKIPPABLE_STAGES))
    assert not is_legal_transition("deploy", "architecture", pipeline)
    assert not is_legal_transition("development", "created", pipeline)
    assert not is_legal_transition("done", "development", pipeline)


@pytest.mark.parametrize("skipped", ALL_SKIP_SETS, ids=lambda s: "+".join(sorted(s)) or "none")
def test_forward_jumps_are_legal_exactly_across_skipped_stages(skipped: frozenset[str]) -> None:
    pipeline = Pipeline(skipped)
    for current, target in itertools.product(ALL_STAGES, ALL_STAGES):
        expected = target in STAGE_TRANSITIONS[current]
        if not expected and current in STAGE_ORDER and target in STAGE_ORDER:
            begin, end = STAGE_ORDER.index(current), STAGE_ORDER.index(target)
            expected = end > begin + 1 and set(STAGE_ORDER[begin + 1 : end]) <= skipped
        assert is_legal_transition(current, target, pipeline) is expected, (current, target)


@pytest.mark.parametrize("skipped", ALL_SKIP_SETS, ids=lambda s: "+".join(sorted(s)) or "none")
def test_next_stage_is_always_a_legal_unskipped_move(skipped: frozenset[str]) -> None:
    pipeline = Pipeline(skipped)
    for stage in STAGE_ORDER[:-1]:
        following = pipeline.next_stage(stage)
        assert following not in skipped
        assert STAGE_ORDER.index(following) > STAGE_ORDER.index(stage)
        check_transition(stage, following, pipeline)
    assert pipeline.stages() == tuple(s for s in STAGE_ORDER if s not in skipped)


def test_next_stage_without_skips_follows_stage_order() -> None:
    pipeline = Pipeline()
    assert [pipeline.next_stage(s) for s in STAGE_ORDER[:-1]] == list(STAGE_ORDER[1:])


def test_next_stage_jumps_over_skipped_stages() -> None:
    pipeline = Pipeline(frozenset({"brd-approval", "architecture", "deploy-staging"}))
    assert pipeline.next_stage("analysis") == "development"
    assert pipeline.next_stage("testing") == "deploy"
    assert pipeline.stages() == (
        "created",
        "analysis",
        "development",
        "testing",
        "deploy",
        "done",
    )


@pytest.mark.parametrize("stage", [DONE, CANCELLED, "nope"])
def test_next_stage_of_a_terminal_or_unknown_stage_raises(stage: str) -> None:
    with pytest.raises(IllegalTransitionError) as caught:
        Pipeline().next_stage(stage)
    assert caught.value.current == stage


@pytest.mark.parametrize("stage", UNSKIPPABLE)
def test_pipeline_rejects_unskippable_stages(stage: str) -> None:
    with pytest.raises(ValueError, match=rf"cannot skip stage\(s\) {re.escape(stage)};"):
        Pipeline(frozenset({stage}))


def test_pipeline_rejects_unknown_stages_and_names_them_all() -> None:
    with pytest.raises(ValueError, match=r"cannot skip stage\(s\) bogus, done;"):
        Pipeline(frozenset({"bogus", "done", "testing"}))


def test_unskippable_stages_are_exactly_the_ones_outside_skippable() -> None:
    assert set(UNSKIPPABLE) == set(STAGE_TRANSITIONS) - SKIPPABLE_STAGES


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_labels_cover_exactly_the_stages_of_the_graph(language: str) -> None:
    assert set(STAGE_LABELS[language]) == set(STAGE_TRANSITIONS.keys())


@pytest.mark.parametrize(
    ("stage", "language"), list(itertools.product(STAGE_TRANSITIONS.keys(), LANGUAGES))
)
def test_every_stage_has_its_own_label(stage: str, language: str) -> None:
    label = stage_label(stage, language)
    assert label == STAGE_LABELS[language][stage]
    assert label.strip() == label
    assert label
    if language == "ru":
        assert re.search("[\u0400-\u04ff]", label), f"ru label of {stage} is not Russian: {label!r}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_labels_are_distinct_within_a_language(language: str) -> None:
    labels = [stage_label(stage, language) for stage in STAGE_TRANSITIONS]
    assert len(set(labels)) == len(labels)


def test_known_labels() -> None:
    assert stage_label("brd-approval") == "BRD approval"
    assert stage_label("deploy-staging", "en") == "Deploying (staging)"
    assert stage_label("done", "ru") == "Внедрено"


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("code-review", "Code review"),
        ("qa_check", "Qa check"),
        ("SECURITY", "Security"),
        ("  -review- ", "Review"),
        ("", "Unknown"),
        ("---", "Unknown"),
    ],
)
@pytest.mark.parametrize("language", LANGUAGES)
def test_unknown_stage_gets_a_neutral_capitalised_label(
    stage: str, expected: str, language: str
) -> None:
    assert stage_label(stage, language) == expected


def test_unknown_language_falls_back_to_english() -> None:
    assert stage_label("done", "de") == "Done"
    assert stage_label("code-review", "de") == "Code review"


# --- random walks ---------------------------------------------------------------------------


class StageWalk(RuleBasedStateMachine):
    """Random legal moves from ``created`` under a random pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.pipeline = Pipeline()
        self.stage = CREATED
        self.visited = [CREATED]

    @initialize(skipped=st.sets(st.sampled_from(sorted(SKIPPABLE_STAGES))))
    def choose_pipeline(self, skipped: set[str]) -> None:
        self.pipeline = Pipeline(frozenset(skipped))

    def legal_targets(self, stage: str) -> list[str]:
        return [t for t in ALL_STAGES if is_legal_transition(stage, t, self.pipeline)]

    @precondition(lambda self: self.stage not in TERMINAL_STAGES)
    @rule(data=st.data())
    def move(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self.legal_targets(self.stage)), label="target")
        check_transition(self.stage, target, self.pipeline)
        if target == CANCELLED:
            pass
        elif STAGE_ORDER.index(target) < STAGE_ORDER.index(self.stage):
            if self.stage in REJECT_TARGET:
                assert REJECT_TARGET[self.stage] == target == "analysis"
            else:
                assert ROLLBACK_TARGET[self.stage] == target == "development"
        else:
            begin, end = STAGE_ORDER.index(self.stage), STAGE_ORDER.index(target)
            assert set(STAGE_ORDER[begin + 1 : end]) <= self.pipeline.skipped
        self.stage = target
        self.visited.append(target)

    @rule(wanted=st.sampled_from([*ALL_STAGES, "nope"]))
    def illegal_moves_raise(self, wanted: str) -> None:
        if wanted in self.legal_targets(self.stage):
            return
        with pytest.raises(IllegalTransitionError):
            check_transition(self.stage, wanted, self.pipeline)

    @invariant()
    def stage_is_known(self) -> None:
        assert self.stage in STAGE_TRANSITIONS

    @invariant()
    def terminal_stages_have_no_moves(self) -> None:
        if self.stage in TERMINAL_STAGES:
            assert self.legal_targets(self.stage) == []

    @invariant()
    def forward_path_reaches_done(self) -> None:
        if self.stage in TERMINAL_STAGES:
            return
        stage, steps = self.stage, 0
        while stage != DONE:
            following = self.pipeline.next_stage(stage)
            check_transition(stage, following, self.pipeline)
            stage, steps = following, steps + 1
            assert steps < len(STAGE_ORDER)

    @invariant()
    def nothing_follows_a_terminal_stage(self) -> None:
        for earlier in self.visited[:-1]:
            assert earlier not in TERMINAL_STAGES


StageWalk.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestStageWalk = StageWalk.TestCase

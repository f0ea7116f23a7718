"""The stage graph of a task, as data.

Theory of operation
-------------------
A task is always in exactly one stage. ``STAGE_TRANSITIONS`` lists, for every stage, the
stages it may move to next; nothing else in the product decides legality. Stages fall in
three groups:

* job stages (``JOB_STAGES``): a job (an agent or a deterministic runner) does the work,
  then the stage's gates decide;
* the human gate (``brd-approval``): the task waits for a person to ``approve`` it, or to
  ``reject`` it with feedback, which sends it back to the stage that wrote the artifact
  (``REJECT_TARGET``);
* terminal stages (``done``, ``cancelled``): nothing moves out of them.

``created`` is where a task is born; it moves on at once. A failed task keeps its stage
(the failure is a flag on the task, not a stage), so ``retry`` knows where to resume.

A repository may skip stages (``Pipeline.skipped``). A move from ``a`` to ``b`` is then
legal when ``b`` is a direct successor of ``a`` or is reached from ``a`` through skipped
stages only, along the forward order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from orchestrator.errors import IllegalTransitionError

__all__ = [
    "CANCELLED",
    "CREATED",
    "DONE",
    "HUMAN_GATE_STAGES",
    "JOB_STAGES",
    "REJECT_TARGET",
    "ROLLBACK_TARGET",
    "STAGE_LABELS",
    "STAGE_ORDER",
    "STAGE_TRANSITIONS",
    "TERMINAL_STAGES",
    "TRANSITION_EFFECTS",
    "Pipeline",
    "check_transition",
    "is_legal_transition",
    "stage_label",
]

CREATED: Final = "created"
DONE: Final = "done"
CANCELLED: Final = "cancelled"

STAGE_TRANSITIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "created": ("analysis", "cancelled"),
    "analysis": ("brd-approval", "cancelled"),
    "brd-approval": ("architecture", "analysis", "cancelled"),
    "architecture": ("development", "cancelled"),
    "development": ("testing", "cancelled"),
    "testing": ("deploy-staging", "development", "cancelled"),
    "deploy-staging": ("deploy", "development", "cancelled"),
    "deploy": ("done", "development", "cancelled"),
    "done": (),
    "cancelled": (),
}

# The forward path a task takes when nothing goes wrong; `cancelled` sits outside it.
STAGE_ORDER: Final[tuple[str, ...]] = (
    "created",
    "analysis",
    "brd-approval",
    "architecture",
    "development",
    "testing",
    "deploy-staging",
    "deploy",
    "done",
)

JOB_STAGES: Final[frozenset[str]] = frozenset(
    {"analysis", "architecture", "development", "testing", "deploy-staging", "deploy"}
)
HUMAN_GATE_STAGES: Final[frozenset[str]] = frozenset({"brd-approval"})
TERMINAL_STAGES: Final[frozenset[str]] = frozenset({DONE, CANCELLED})
# Stages whose failure means the code is wrong: the task goes back to development.
ROLLBACK_TARGET: Final[Mapping[str, str]] = {
    "testing": "development",
    "deploy-staging": "development",
    "deploy": "development",
}
# Human gates a person may reject, and the stage that redoes the gate's artifact with
# the person's feedback (the BRD goes back to the analysis that wrote it).
REJECT_TARGET: Final[Mapping[str, str]] = {"brd-approval": "analysis"}
# Which transitions have side effects, in the order they run (the effects themselves
# are built in effects/merge_deploy.py; entering one takes the transition lease).
TRANSITION_EFFECTS: Final[Mapping[tuple[str, str], tuple[str, ...]]] = {
    ("deploy", "done"): ("merge", "deploy"),
}
# Stages a repository may leave out of its pipeline.
SKIPPABLE_STAGES: Final[frozenset[str]] = frozenset(
    {"analysis", "brd-approval", "architecture", "testing", "deploy-staging", "deploy"}
)

STAGE_LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        "created": "To analyse",
        "analysis": "Analysis",
        "brd-approval": "BRD approval",
        "architecture": "Architecture",
        "development": "Development",
        "testing": "Testing",
        "deploy-staging": "Deploying (staging)",
        "deploy": "Deploy",
        "done": "Done",
        "cancelled": "Cancelled",
    },
    "ru": {
        "created": "К анализу",
        "analysis": "Анализ",
        "brd-approval": "Подтверждение BRD",
        "architecture": "Архитектура",
        "development": "Разработка",
        "testing": "Тестирование",
        "deploy-staging": "Выкладка (staging)",
        "deploy": "Внедрение",
        "done": "Внедрено",
        "cancelled": "Отменено",
    },
}


def stage_label(stage: str, language: str = "en") -> str:
    """Display label of a stage; an unknown stage gets a neutral capitalised label."""
    labels = STAGE_LABELS.get(language, STAGE_LABELS["en"])
    if stage in labels:
        return labels[stage]
    neutral = stage.replace("-", " ").replace("_", " ").strip()
    return neutral.capitalize() if neutral else "Unknown"


@dataclass(frozen=True)
class Pipeline:
    """A repository's view of the stage graph: which stages it skips."""

    skipped: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = self.skipped - SKIPPABLE_STAGES
        if unknown:
            allowed = ", ".join(sorted(SKIPPABLE_STAGES))
            raise ValueError(
                f"cannot skip stage(s) {', '.join(sorted(unknown))}; skippable: {allowed}"
            )

    def next_stage(self, stage: str) -> str:
        """The stage after ``stage`` on the forward path, jumping over skipped stages."""
        if stage not in STAGE_ORDER or stage == DONE:
            raise IllegalTransitionError(stage, "<next>", STAGE_TRANSITIONS.get(stage, ()))
        position = STAGE_ORDER.index(stage) + 1
        while STAGE_ORDER[position] in self.skipped:
            position += 1
        return STAGE_ORDER[position]

    def stages(self) -> tuple[str, ...]:
        """The forward path of this pipeline, skipped stages left out."""
        return tuple(s for s in STAGE_ORDER if s not in self.skipped)


def is_legal_transition(current: str, target: str, pipeline: Pipeline | None = None) -> bool:
    """Whether a task in ``current`` may move to ``target``."""
    allowed = STAGE_TRANSITIONS.get(current)
    if allowed is None:
        return False
    if target in allowed:
        return True
    if current not in STAGE_ORDER or target not in STAGE_ORDER:
        return False
    skipped = pipeline.skipped if pipeline else frozenset()
    begin, end = STAGE_ORDER.index(current), STAGE_ORDER.index(target)
    # A forward jump is legal only across stages the repository skips.
    return end > begin + 1 and all(s in skipped for s in STAGE_ORDER[begin + 1 : end])


def check_transition(current: str, target: str, pipeline: Pipeline | None = None) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current -> target`` is legal."""
    if not is_legal_transition(current, target, pipeline):
        raise IllegalTransitionError(current, target, STAGE_TRANSITIONS.get(current, ()))

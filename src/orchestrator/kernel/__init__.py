"""The pure kernel: the stage graph, the gates and the decisions. No I/O in here.

The engine loads facts (artifacts, commits, exit codes), asks the kernel, then applies
the decision in one transaction. Everything in this package is data and pure functions.
"""

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
from orchestrator.kernel.gates import (
    GATES,
    QG_CHECKS,
    Outcome,
    StageFacts,
    TestsVerdict,
    Verdict,
    _parse_tests_verdict,
    check_tests_passed,
    run_gates,
)
from orchestrator.kernel.stages import (
    HUMAN_GATE_STAGES,
    JOB_STAGES,
    REJECT_TARGET,
    ROLLBACK_TARGET,
    STAGE_ORDER,
    STAGE_TRANSITIONS,
    TERMINAL_STAGES,
    Pipeline,
    check_transition,
    is_legal_transition,
    stage_label,
)

__all__ = [
    "ENVIRONMENT",
    "GATES",
    "HUMAN_GATE_STAGES",
    "JOB_STAGES",
    "QG_CHECKS",
    "REJECT_TARGET",
    "ROLLBACK_TARGET",
    "STAGE_ORDER",
    "STAGE_TRANSITIONS",
    "TERMINAL_STAGES",
    "Advance",
    "Decision",
    "Fail",
    "Limits",
    "Outcome",
    "Pipeline",
    "Retry",
    "Rollback",
    "StageFacts",
    "TestsVerdict",
    "Verdict",
    "_parse_tests_verdict",
    "check_tests_passed",
    "check_transition",
    "decide_after_job",
    "is_legal_transition",
    "run_gates",
    "stage_label",
]

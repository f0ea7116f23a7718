"""The ``command`` adapter: any CLI, judged by its exit code.

The agent's ``command`` template is the whole command line. The prompt is written to its
stdin (and is in ``{prompt_file}`` / ``$ORCH_PROMPT_FILE``) unless ``prompt_via = "arg"``,
when the template passes ``{prompt}`` itself and stdin stays closed.

Cost is optional. The agent may write a JSON object to ``$ORCH_RESULT_FILE`` (also
``{result_file}``), at the end or as it goes::

    {"cost_usd": 0.42, "input_tokens": 12000, "output_tokens": 800,
     "model": "my-model", "num_turns": 3}

Failing that, a Claude Code-shaped result object on the last lines of its output is
read (the built-in ``scripted`` agent prints one). Tokens without a cost are priced at
``usd_per_mtok_input`` / ``usd_per_mtok_output`` when those are set.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.agents.adapter import FinishedRun, Invocation, RunOutcome
from orchestrator.agents.commands import AgentSpec, RunContext, render_command
from orchestrator.agents.usage import Usage, parse_usage, priced_usd, usage_from_result
from orchestrator.settings import AgentConfig

__all__ = ["CommandAdapter", "parse_result_file"]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def parse_result_file(text: str, config: AgentConfig) -> Usage | None:
    """Usage from a result file's text; None when it is not a JSON object."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if "total_cost_usd" in data:
        return usage_from_result(data)
    input_tokens = int(_number(data.get("input_tokens")))
    output_tokens = int(_number(data.get("output_tokens")))
    cost = _number(data.get("cost_usd"))
    if "cost_usd" not in data:
        cost = priced_usd(
            input_tokens, output_tokens, config.usd_per_mtok_input, config.usd_per_mtok_output
        )
    model = data.get("model")
    turns = data.get("num_turns")
    return Usage(
        cost_usd=cost,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model=str(model) if model else None,
        num_turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
        is_error=bool(data.get("is_error", False)),
    )


class CommandAdapter:
    """Any command line; exit code 0 is success."""

    name = "command"
    default_program = ""
    install_hint = "install it"

    def invocation(self, spec: AgentSpec, context: RunContext) -> Invocation:
        argv = render_command(spec, context)
        stdin = None if spec.config.prompt_via == "arg" else context.prompt
        return Invocation(argv=argv, stdin=stdin)

    def outcome(self, spec: AgentSpec, run: FinishedRun) -> RunOutcome:
        usage = None
        if run.result_text is not None:
            usage = parse_result_file(run.result_text, spec.config)
        if usage is None:
            usage = parse_usage(run.output)
        return RunOutcome(usage=usage)

    def spent_usd(self, spec: AgentSpec, output: str, result_text: str | None) -> float | None:
        if result_text is None:
            return None
        usage = parse_result_file(result_text, spec.config)
        return usage.cost_usd if usage is not None else None

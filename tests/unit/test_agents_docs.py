"""docs/agents.md stays true: its examples load, and its command line is the one we build."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Final

import pytest

from orchestrator.agents import RunContext, build_invocation, resolve_agent
from orchestrator.agents.command_adapter import parse_result_file
from orchestrator.settings import AgentConfig, Settings, load_settings
from orchestrator.testing import load_script
from orchestrator.testing.model_server import API_KEY, codex_args

DOC: Final = Path(__file__).resolve().parents[2] / "docs" / "agents.md"


def blocks(language: str) -> list[str]:
    text = DOC.read_text()
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, flags=re.MULTILINE | re.DOTALL)
    # Blocks inside list items are indented; strip the item's indentation.
    return [re.sub(rf"^{indent}", "", body, flags=re.MULTILINE) for indent, body in found]


def load(tmp_path: Path, toml: str) -> Settings:
    config = tmp_path / "orch.toml"
    config.write_text(toml)
    return load_settings(config)


def test_every_toml_example_is_a_valid_config_or_script(tmp_path: Path) -> None:
    examples = blocks("toml")
    assert len(examples) >= 5
    for example in examples:
        if "[[sessions]]" in example:
            script = tmp_path / "script.toml"
            script.write_text(example)
            assert load_script(script).sessions
        else:
            load(tmp_path, example)


def test_the_claude_code_example_builds_the_command_line_the_doc_shows(tmp_path: Path) -> None:
    [claude_example] = [b for b in blocks("toml") if 'adapter = "claude-code"' in b and "args" in b]
    settings = load(tmp_path, claude_example)
    spec = resolve_agent(settings, "claude", tmp_path, "development")
    context = RunContext("development", "SVC-42", tmp_path, "prompt", tmp_path / "p.md")
    built = " ".join(build_invocation(spec, context).argv)
    [shown] = [b for b in blocks("text") if b.startswith("claude -p")]
    shown_prefix = " ".join(shown.split()).split(" --append-system-prompt")[0]
    assert built.startswith(shown_prefix + " --append-system-prompt")


def test_the_result_file_example_reads_as_usage() -> None:
    [example] = blocks("json")
    usage = parse_result_file(example, AgentConfig(command=["x"]))
    assert usage is not None
    assert (usage.cost_usd, usage.model, usage.num_turns) == (0.42, "my-model", 3)


@pytest.mark.parametrize(
    ("name", "adapter"), [("claude", "claude-code"), ("codex", "codex"), ("aider", "command")]
)
def test_the_documented_agents_resolve_to_their_adapter(
    tmp_path: Path, name: str, adapter: str
) -> None:
    example = next(b for b in blocks("toml") if f"[agents.{name}]" in b)
    spec = resolve_agent(load(tmp_path, example), name)
    assert spec.config.adapter == adapter


def test_the_codex_dry_run_example_is_what_the_model_server_prints() -> None:
    [example] = [block for block in blocks("toml") if "orch-model-server" in block]
    documented = tomllib.loads(example)["agents"]["codex"]
    assert documented["args"] == codex_args("http://127.0.0.1:8787")
    assert documented["env"] == {"OPENAI_API_KEY": API_KEY}

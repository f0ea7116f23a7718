"""`python -m orchestrator` runs the CLI."""

from orchestrator.cli.main import main

main()

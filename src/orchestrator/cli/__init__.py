"""The orch command line: its commands, progress display, the demo and the stage diagram."""

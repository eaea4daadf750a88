"""Operator commands: the CLI, status and lag, show, tail, replay, and the web console."""

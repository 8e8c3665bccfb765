"""Helpers shared by tests that are not fixtures: cross-process locks, document parsing."""

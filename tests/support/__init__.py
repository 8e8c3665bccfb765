"""Helpers shared by test modules, which never import each other (tests/test_layers.py
checks it): clients, raw frames, admin HTTP, in-process and process clusters, shared
backends, store repositories, cross-process locks, document parsing. Shared fixtures
live in the nearest conftest.py."""

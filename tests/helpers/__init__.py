"""Shared test helpers (no tests here): fake tasks, the tiny model, test libraries, app pages, a server's
port and health. Fixtures built on them live in tests/conftest.py; a test imports these, never another
test module."""

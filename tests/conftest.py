"""Fixtures shared by all tests live in tests/support; this file only registers them (and Hypothesis' profile)."""

from hypothesis import settings

pytest_plugins = [
    "tests.support.registry_fixtures",
    "tests.support.aws_fixtures",
    "tests.support.ci_servers",
    "tests.support.package_index",
    "tests.support.cli_fixtures",
    "tests.support.lambda_env",
]

# No per-example deadline: it is a timed assertion, and on a shared machine one slow example (a garbage
# collection, a busy core) failed `test_transition_invariants` at 260 ms against the 200 ms default. Every
# property is still checked on as many examples as before; speed is measured by the bench scripts.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

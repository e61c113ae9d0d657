"""Fixtures shared by all tests live in tests/support; this file only registers them."""

pytest_plugins = [
    "tests.support.registry_fixtures",
    "tests.support.aws_fixtures",
    "tests.support.ci_servers",
    "tests.support.package_index",
    "tests.support.cli_fixtures",
    "tests.support.lambda_env",
]

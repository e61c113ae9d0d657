"""Adapters for CI systems whose logs back-fill trust: GitHub Actions, GitLab CI, and saved log files."""

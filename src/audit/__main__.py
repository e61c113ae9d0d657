"""`python -m audit` is the `digest-audit` command."""

from audit.cli import console

raise SystemExit(console())

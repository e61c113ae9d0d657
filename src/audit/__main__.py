"""`python -m audit` is the `digest-audit` command."""

from audit.cli import main

raise SystemExit(main())

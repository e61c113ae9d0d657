"""The use cases: each a small class or function over ports (audit.ports), called by the CLI and the handlers."""

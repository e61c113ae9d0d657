"""Writes a docker `config.json` the way `docker login` does, so tests exercise the real credential lookup."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

from tests.support.pusher import Credentials


def auth_entry(credentials: Credentials) -> dict[str, str]:
    """One `auths` entry: base64 of `user:password`, as docker stores it without a credential store."""
    raw = f"{credentials.username}:{credentials.password}".encode()
    return {"auth": base64.b64encode(raw).decode("ascii")}


def write_docker_config(directory: Path, logins: Mapping[str, Credentials]) -> Path:
    """Write `directory/config.json` with an `auths` entry per registry host[:port]; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    document = {"auths": {host: auth_entry(credentials) for host, credentials in logins.items()}}
    path = directory / "config.json"
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)
    return directory

"""Platforms of a multi-arch index, matched the way `docker pull --platform` matches them.

Indexes spell one platform several ways: Docker Hub's official images say `arm64` + variant `v8`, buildx says
`arm64` with no variant, `arm` alone means `arm/v7`. Comparing the strings literally turns `--platform linux/arm64`
against an official image into a false "not in index". The rules below follow containerd's platform
normalisation (`platforms.Normalize`), which is what the Docker engine applies before choosing a child.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from audit.errors import UsageError
from audit.models import Digest

_PART_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_OS_ALIASES: Final = {"macos": "darwin"}


@dataclass(frozen=True, slots=True, order=True)
class Platform:
    """A normalised `os/architecture[/variant]`; `str()` gives the canonical spelling."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse and normalise a platform string; raises UsageError naming the input."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(_PART_RE.match(part) for part in parts):
            raise UsageError(
                f"invalid platform {text!r}",
                hint="use OS/ARCH[/VARIANT], e.g. linux/amd64, linux/arm64 or linux/arm/v7",
            )
        return cls.of(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def of(cls, os_name: str, architecture: str, variant: str = "") -> Platform:
        os_name = os_name.lower()
        architecture, variant = _normalise_arch(architecture.lower(), variant.lower())
        return cls(_OS_ALIASES.get(os_name, os_name), architecture, variant)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def _normalise_arch(architecture: str, variant: str) -> tuple[str, str]:
    """containerd's `normalizeArch`: the default variant of each architecture is written as no variant."""
    match architecture:
        case "i386" | "386":
            return "386", ""
        case "x86_64" | "x86-64" | "amd64":
            return "amd64", "" if variant == "v1" else variant
        case "aarch64" | "arm64":
            if variant in ("8", "v8", "v8.0"):
                return "arm64", ""
            if variant in ("9", "9.0", "v9.0"):
                return "arm64", "v9"
            return "arm64", variant
        case "armhf":
            return "arm", "v7"
        case "armel":
            return "arm", "v6"
        case "arm":
            if variant in ("", "7"):
                return "arm", "v7"
            if variant in ("5", "6", "8"):
                return "arm", f"v{variant}"
            return "arm", variant
        case _:
            return architecture, variant


def platform_of_key(key: str) -> Platform | None:
    """The platform of an index entry key (`os/arch[/variant]` as read from the index); None if unreadable."""
    parts = key.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    return Platform.of(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def select_platform(platforms: Mapping[str, Digest], wanted: Platform) -> tuple[str, Digest] | None:
    """The child a pull for `wanted` would take: the first entry (index order) whose platform normalises equal.

    Returns the entry's key as the index spells it, with its digest; None when no entry matches.
    """
    for key, digest in platforms.items():
        if platform_of_key(key) == wanted:
            return key, digest
    return None

"""`digest-audit watch`: per-repository settings: report new tags, ignore patterns, tags allowed to move."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from audit import bootstrap
from audit.cli.common import add_store_options
from audit.config import Environment, RegistryOptions, audit_config
from audit.errors import UsageError
from audit.models import ImageRef, MovingMode, WatchSettings
from audit.reference import familiar_name


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "watch",
        help="set how a repository is audited (new tags, ignore patterns, moving tags)",
        description="Without options, show the settings of IMAGE. Options change only what they name.",
    )
    parser.add_argument("image", metavar="IMAGE", help="a repository, e.g. openzaak/open-zaak (no tag)")
    tracking = parser.add_mutually_exclusive_group()
    tracking.add_argument(
        "--track-new-tags",
        dest="track",
        action="store_true",
        default=None,
        help="report tags the registry has that nobody recorded (untracked)",
    )
    tracking.add_argument("--no-track-new-tags", dest="track", action="store_false")
    parser.add_argument(
        "--ignore", action="append", default=[], metavar="GLOB", help="tags never reported (repeatable)"
    )
    parser.add_argument("--no-ignore", action="append", default=[], metavar="GLOB", help="remove an ignore pattern")
    parser.add_argument(
        "--moving",
        action="append",
        default=[],
        metavar="TAG[=latest-recorded|any-trusted]",
        help="a tag CI moves legitimately, e.g. latest (default policy latest-recorded)",
    )
    parser.add_argument("--pinned", action="append", default=[], metavar="TAG", help="make a moving tag pinned again")
    add_store_options(parser)
    parser.set_defaults(handler=run_watch)


def parse_moving(text: str) -> tuple[str, MovingMode]:
    tag, _, mode_text = text.partition("=")
    mode_text = mode_text or MovingMode.LATEST_RECORDED.value
    try:
        mode = MovingMode(mode_text)
    except ValueError:
        raise UsageError(
            f"invalid --moving {text!r}: unknown policy {mode_text!r}",
            hint="use TAG, TAG=latest-recorded or TAG=any-trusted",
        ) from None
    ImageRef.parse(f"x:{tag}")  # validates the tag syntax with the usual error
    return tag, mode


def run_watch(args: argparse.Namespace) -> int:
    ref = ImageRef.parse(args.image)
    if ref.digest is not None or ":" in args.image.rsplit("/", 1)[-1]:
        raise UsageError(f"watch takes a repository without tag or digest, not {args.image!r}")
    store = bootstrap.trust_store(args.trust_file, audit_config(Environment(), RegistryOptions()), create=True)
    current = store.get_watch_settings(ref.image) or WatchSettings(registry=ref.registry, repository=ref.repository)
    moving = dict(current.moving)
    for text in args.moving:
        tag, mode = parse_moving(text)
        moving[tag] = mode
    for tag in args.pinned:
        moving.pop(tag, None)
    ignore = [pattern for pattern in current.ignore if pattern not in args.no_ignore]
    ignore.extend(pattern for pattern in args.ignore if pattern not in ignore)
    try:
        updated = WatchSettings(
            registry=ref.registry,
            repository=ref.repository,
            track_new_tags=current.track_new_tags if args.track is None else args.track,
            ignore=tuple(ignore),
            moving=moving,
        )
    except ValidationError as exc:
        problem = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise UsageError(
            f"invalid watch settings for {familiar_name(ref.registry, ref.repository)}: {problem}"
        ) from None
    if _changes_requested(args) and updated != current:
        store.put_watch_settings(updated)
    print(describe(updated))
    return 0


def _changes_requested(args: argparse.Namespace) -> bool:
    return bool(args.track is not None or args.ignore or args.no_ignore or args.moving or args.pinned)


def describe(settings: WatchSettings) -> str:
    name = familiar_name(settings.registry, settings.repository)
    moving = ", ".join(f"{tag}={mode.value}" for tag, mode in sorted(settings.moving.items())) or "none"
    return "\n".join(
        [
            f"{name}",
            f"  track new tags: {'yes' if settings.track_new_tags else 'no'}",
            f"  ignore: {', '.join(settings.ignore) or 'none'}",
            f"  moving tags: {moving} (all other tags are pinned)",
        ]
    )

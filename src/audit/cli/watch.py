"""`digest-audit watch`: per-repository settings: report new tags, ignore patterns, tags allowed to move."""

from __future__ import annotations

import argparse

from audit import bootstrap
from audit.app.watch import WatchChanges, update_watch
from audit.cli.common import add_store_options, settings_from
from audit.cli.packages import watch_package
from audit.errors import UsageError
from audit.models import ImageRef, MovingMode
from audit.packages import is_package_registry
from audit.records import WatchSettings
from audit.reference import familiar_name, is_package_spec


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "watch",
        help="set how a repository is audited (new tags, ignore patterns, moving tags)",
        description="Without options, show the settings of IMAGE. Options change only what they name.",
    )
    parser.add_argument(
        "image", metavar="IMAGE | pypi:PROJECT", help="a repository, e.g. openzaak/open-zaak (no tag), or pypi:PROJECT"
    )
    tracking = parser.add_mutually_exclusive_group()
    tracking.add_argument(
        "--track-new-tags",
        dest="track",
        action="store_true",
        default=None,
        help="report tags the registry has that nobody recorded (untracked)",
    )
    tracking.add_argument("--no-track-new-tags", dest="track", action="store_false")
    tracking.add_argument(
        "--track-new-releases",
        dest="track",
        action="store_true",
        default=None,
        help="pypi:PROJECT: report releases nobody recorded (untracked)",
    )
    tracking.add_argument("--no-track-new-releases", dest="track", action="store_false")
    parser.add_argument("--index-url", metavar="URL", help="pypi: the simple index (default https://pypi.org/simple)")
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
    app = bootstrap.build(settings_from(args))
    if is_package_spec(args.image):
        print(describe(watch_package(args, app, app.recorder)))
        return 0
    if args.index_url is not None:
        raise UsageError("--index-url is for pypi:PROJECT", hint="drop it for images")
    ref = ImageRef.parse(args.image)
    if ref.digest is not None or ":" in args.image.rsplit("/", 1)[-1]:
        raise UsageError(f"watch takes a repository without tag or digest, not {args.image!r}")
    store = app.recorder
    changes = WatchChanges(
        track_new_tags=args.track,
        ignore=args.ignore,
        no_ignore=args.no_ignore,
        moving=[parse_moving(text) for text in args.moving],
        pinned=args.pinned,
    )
    print(describe(update_watch(store, ref.registry, ref.repository, changes)))
    return 0


def describe(settings: WatchSettings) -> str:
    name = familiar_name(settings.registry, settings.repository)
    if is_package_registry(settings.registry):
        return f"{name}\n  track new releases: {'yes' if settings.track_new_tags else 'no'}"
    moving = ", ".join(f"{tag}={mode.value}" for tag, mode in sorted(settings.moving.items())) or "none"
    return "\n".join(
        [
            f"{name}",
            f"  track new tags: {'yes' if settings.track_new_tags else 'no'}",
            f"  ignore: {', '.join(settings.ignore) or 'none'}",
            f"  moving tags: {moving} (all other tags are pinned)",
        ]
    )

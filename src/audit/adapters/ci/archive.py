"""Reading a GitHub Actions log archive (zip) defensively: entry count, sizes, ratio and names are bounded.

A refused archive is that run's finding (`log-unreadable`), never the end of the back-fill.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass

from audit.records import JobLog
from audit.untrusted import printable

MAX_ENTRIES = 1_000
MAX_ENTRY_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_RATIO = 200  # text compresses well, but not a thousand to one
_ENTRY_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}(?:/[^/\\\x00-\x1f]{1,255})?$")
_ORDER = re.compile(r"^(\d+)_(.*)\.txt$")


class ArchiveRefused(Exception):
    """The archive breaks a bound or names an unsafe path; the message says which."""


@dataclass(frozen=True)
class _Entry:
    job: str
    order: int
    step: str | None
    text: str


def _split_name(name: str) -> tuple[str, int, str | None]:
    """`3_build.txt` is a whole job's log; `build/2_Push image.txt` one step of job `build`."""
    folder, _, file_name = name.rpartition("/")
    match = _ORDER.match(file_name)
    if match is None:
        return (folder or file_name.removesuffix(".txt"), 0, None)
    order, title = int(match.group(1)), match.group(2)
    if folder:
        return (folder, order, title)
    return (title, order, None)


def job_logs_from_zip(data: bytes) -> list[JobLog]:
    """The jobs of a run: per-step files when the archive has them, else the whole-job file."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ArchiveRefused(f"not a zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ArchiveRefused(f"{len(infos)} entries (limit {MAX_ENTRIES})")
        total = 0
        for info in infos:
            _check_entry(info)
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise ArchiveRefused(f"{total} bytes uncompressed (limit {MAX_TOTAL_BYTES})")
        entries: list[_Entry] = []
        for info in infos:
            if info.is_dir():
                continue
            job, order, step = _split_name(info.filename)
            entries.append(_Entry(job, order, step, _read(archive, info).decode("utf-8", errors="replace")))
    with_steps = {entry.job for entry in entries if entry.step is not None}
    jobs: dict[str, list[_Entry]] = {}
    for entry in entries:
        if entry.step is None and entry.job in with_steps:
            continue  # the whole-job file repeats its step files
        jobs.setdefault(entry.job, []).append(entry)
    return [
        JobLog(job=job, steps=tuple((entry.step, entry.text) for entry in sorted(parts, key=lambda e: e.order)))
        for job, parts in sorted(jobs.items())
    ]


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    shown = printable(name, max_chars=120)
    if name.startswith("/") or ".." in name.split("/") or not _ENTRY_NAME.match(name.rstrip("/")):
        raise ArchiveRefused(f"unsafe entry name {shown!r}")
    if info.file_size > MAX_ENTRY_BYTES:
        raise ArchiveRefused(f"entry {shown!r} is {info.file_size} bytes (limit {MAX_ENTRY_BYTES})")
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
        raise ArchiveRefused(f"entry {shown!r} expands {info.file_size // info.compress_size}:1 (a zip bomb?)")


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Read no more than the declared size: a lying header must not let an entry grow past it."""
    try:
        with archive.open(info) as stream:
            data = stream.read(info.file_size + 1)
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, NotImplementedError) as exc:
        raise ArchiveRefused(f"entry {printable(info.filename, max_chars=120)!r} cannot be read ({exc})") from None
    if len(data) > info.file_size:
        raise ArchiveRefused(f"entry {printable(info.filename, max_chars=120)!r} is larger than it declares")
    return data

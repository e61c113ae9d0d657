"""Pure parsing of CI logs for pushed image digests: the evidence a back-fill trusts, and what it refuses to guess.

CI logs are untrusted text. A digest is tied to a tag only by evidence in the same job (`docker push`, BuildKit's
push/export lines, docker/build-push-action's metadata, crane, skopeo --digestfile); a tag seen with two digests,
or a digest with no tag, is reported as ambiguous. References and digests pass the reference grammar first.
No I/O here: adapters hand in the text of each job and step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from audit.errors import AuditError
from audit.models import Digest, ImageRef
from audit.untrusted import printable

#: Bounds on what one job may contribute; a log is attacker-controlled text.
MAX_SIGHTINGS_PER_JOB = 2_000
MAX_LINE_CHARS = 16_384
MAX_METADATA_CHARS = 262_144

_DIGEST = r"sha(?:256:[0-9a-f]{64}|512:[0-9a-f]{128})"
# GitHub Actions: `2021-04-01T10:00:00.1234567Z ` before every line (and a BOM at the start of a file).
_GITHUB_STAMP = re.compile(r"^\ufeff?(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z) ")
# GitLab runner with FF_TIMESTAMPS: `2024-05-14T11:19:20.000000Z 00O ` (stream, O/E, `+` = continuation).
_GITLAB_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z) [0-9a-f]{2}[OE]([+ ])")
# Go's log package (crane): `2021/04/01 10:00:00 `.
_GO_LOG_STAMP = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)? ")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_SECTION = re.compile(r"^section_(start|end):\d+:([A-Za-z0-9_.-]{1,100})(?:\[[^\]]*\])?$")
_GROUP = re.compile(r"^##\[group\](.*)$")
_ENDGROUP = "##[endgroup]"

_PUSH_REFERS = re.compile(r"^The push refers to repository \[([^\]\s]{1,512})\]$")
_DIGEST_SIZE = re.compile(rf"^(\S{{1,512}}): digest: ({_DIGEST}) size: \d+$")
_BK_LIST = re.compile(rf"^#(\d+) exporting manifest list ({_DIGEST})(?: [0-9.]+s)?(?: done)?$")
_BK_MANIFEST = re.compile(rf"^#(\d+) exporting manifest ({_DIGEST})(?: [0-9.]+s)?(?: done)?$")
_BK_NAMING = re.compile(r"^#(\d+) naming to (\S{1,2048})(?: [0-9.]+s)?(?: done)?$")
_BK_PUSHING = re.compile(rf"^#(\d+) pushing (?:layers|manifest for (\S{{1,512}})@({_DIGEST}))")
_BARE_DIGEST = re.compile(rf"^({_DIGEST})$")
_DIGEST_REF = re.compile(rf"^(\S{{1,512}})@({_DIGEST})$")
_CRANE_COMMAND = re.compile(r"(?:^|[\s;&|+$])crane (?:push|copy|cp)\s+(.+)$")
_SKOPEO_COMMAND = re.compile(r"(?:^|[\s;&|+$])skopeo (?:--\S+ )*copy\s+(.+)$")


@dataclass(frozen=True, slots=True)
class LogLocation:
    """Where in a run's logs a line is: job, step (when known) and line number within that step's log."""

    job: str
    step: str | None
    line: int

    def describe(self) -> str:
        step = f", step {printable(self.step, max_chars=120)!r}" if self.step else ""
        return f"job {printable(self.job, max_chars=120)!r}{step}, line {self.line}"


@dataclass(frozen=True, slots=True)
class Sighting:
    """One line (or group) that says a digest was pushed; `ref` carries the tag when the evidence names one."""

    ref: ImageRef | None
    digest: Digest
    kind: str
    where: LogLocation
    logged_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PushedDigest:
    """A tag tied to exactly one digest by evidence in one job."""

    ref: ImageRef  # with tag and digest
    evidence: tuple[Sighting, ...]

    @property
    def first(self) -> Sighting:
        return self.evidence[0]

    def describe(self) -> str:
        kinds = ", ".join(dict.fromkeys(sighting.kind for sighting in self.evidence))
        return f"{self.first.where.describe()}: {kinds}"


@dataclass(frozen=True, slots=True)
class Unresolved:
    """Evidence that does not tie one digest to one tag; reported for a person, never recorded."""

    reference: str  # printable: a familiar name, or the raw text that failed the grammar
    digests: tuple[Digest, ...]
    reason: str
    where: LogLocation


@dataclass
class JobEvidence:
    pushed: list[PushedDigest] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LogLine:
    number: int
    text: str
    logged_at: datetime | None
    section: str | None  # a GitLab section started on this line


def log_lines(text: str) -> list[LogLine]:
    """Lines as a person reads them: timestamp prefixes, ANSI colours and carriage-return redraws removed."""
    lines: list[LogLine] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:MAX_LINE_CHARS].rstrip("\r")
        logged_at: datetime | None = None
        continuation = False
        if match := _GITLAB_STAMP.match(line):
            logged_at = _moment(match.group(1))
            continuation = match.group(2) == "+"
            line = line[match.end() :]
        elif match := _GITHUB_STAMP.match(line):
            logged_at = _moment(match.group(1))
            line = line[match.end() :]
        section: str | None = None
        segments = line.split("\r")
        for segment in segments[:-1]:
            found = _SECTION.match(_ANSI.sub("", segment))
            if found and found.group(1) == "start":
                section = found.group(2)
        line = _ANSI.sub("", segments[-1]).strip()
        line = _GO_LOG_STAMP.sub("", line, count=1)
        if continuation and lines:
            previous = lines[-1]
            lines[-1] = LogLine(previous.number, previous.text + line, previous.logged_at, previous.section)
            continue
        lines.append(LogLine(number, line, logged_at, section))
    return lines


def _moment(text: str) -> datetime | None:
    whole, _, fraction = text.rstrip("Z").partition(".")
    try:
        moment = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.replace(microsecond=int((fraction + "000000")[:6])) if fraction else moment


def _tagged(text: str) -> ImageRef | None:
    """A reference with a tag and no digest, or None when it fails the grammar."""
    try:
        ref = ImageRef.parse(text)
    except AuditError:
        return None
    if ref.tag is None or ref.digest is not None or not _names_tag(text):
        return None
    return ref


def _names_tag(text: str) -> bool:
    """`ImageRef.parse` defaults a missing tag to `latest`; evidence must name the tag itself."""
    name = text.partition("@")[0]
    return name.rfind(":") > name.rfind("/")


def _unquote(word: str) -> str:
    return word.strip().strip("'\"")


class _StepScanner:
    """State of one step's scan: the last `docker push` repository, BuildKit vertices, pending commands."""

    def __init__(self, job: str, step: str | None, out: list[Sighting], problems: list[Unresolved]) -> None:
        self.job = job
        self.step = step
        self.out = out
        self.problems = problems
        self.push_repository: str | None = None
        self.vertices: dict[str, _Vertex] = {}
        self.group: str | None = None
        self.group_lines: list[LogLine] = []
        self.crane_targets: list[ImageRef] = []
        self.skopeo_target: ImageRef | None = None

    def where(self, line: LogLine) -> LogLocation:
        return LogLocation(self.job, self.step, line.number)

    def sight(self, ref: ImageRef | None, digest_text: str, kind: str, line: LogLine) -> None:
        if len(self.out) >= MAX_SIGHTINGS_PER_JOB:
            return
        digest = Digest.parse(digest_text)
        self.out.append(Sighting(ref, digest, kind, self.where(line), line.logged_at))

    def problem(self, reference: str, digests: Iterable[str | Digest], reason: str, line: LogLine) -> None:
        if len(self.problems) >= MAX_SIGHTINGS_PER_JOB:
            return
        parsed = tuple(value if isinstance(value, Digest) else Digest.parse(value) for value in digests)
        self.problems.append(Unresolved(printable(reference, max_chars=300), parsed, reason, self.where(line)))

    def feed(self, line: LogLine) -> None:
        text = line.text
        if self.group is not None:
            if text == _ENDGROUP:
                self.close_group()
            else:
                self.group_lines.append(line)
            return
        if match := _GROUP.match(text):
            self.group = match.group(1).strip()
            self.group_lines = [line]
            return
        self.scan(line)

    def close_group(self) -> None:
        name, lines = self.group, self.group_lines
        self.group, self.group_lines = None, []
        if name == "Metadata":
            self.metadata(lines)
        elif name == "Digest":
            values = [entry for entry in lines[1:] if entry.text]
            if len(values) == 1 and _BARE_DIGEST.match(values[0].text):
                # The action's `digest` output names no tag: only corroborates a tag tied by other evidence.
                self.sight(None, values[0].text, "build-push-action digest", values[0])
        elif name is not None and name.startswith("Run "):
            # A step's script is shown in a `Run ...` group: commands echoed there set what follows.
            for entry in lines:
                self.commands(entry)
        # Other groups (ImageID: the config digest, never a pushed one) carry no evidence.

    def metadata(self, lines: list[LogLine]) -> None:
        body = "\n".join(entry.text for entry in lines[1:])
        if len(body) > MAX_METADATA_CHARS or not lines:
            return
        try:
            data = json.loads(body)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        names, digest = data.get("image.name"), data.get("containerimage.digest")
        if not isinstance(names, str) or not isinstance(digest, str) or not re.fullmatch(_DIGEST, digest):
            return
        anchor = lines[0]
        for name in (part.strip() for part in names.split(",")[:100]):
            if not name:
                continue
            ref = _tagged(name)
            if ref is None:
                self.problem(name, [digest], "metadata image.name is not a valid IMAGE:TAG", anchor)
            else:
                self.sight(ref, digest, "build-push-action metadata", anchor)

    def commands(self, line: LogLine) -> None:
        text = line.text
        if match := _CRANE_COMMAND.search(text):
            words = match.group(1).split()
            target = _tagged(_unquote(words[-1])) if len(words) >= 2 else None
            if target is not None:
                self.crane_targets.append(target)
        if (match := _SKOPEO_COMMAND.search(text)) and "--digestfile" in text:
            destination = _unquote(match.group(1).split()[-1])  # skopeo copy [options] SOURCE DESTINATION
            self.skopeo_target = (
                _tagged(destination.removeprefix("docker://")) if destination.startswith("docker://") else None
            )

    def scan(self, line: LogLine) -> None:
        text = line.text
        if not text:
            return
        if text.startswith(("$ ", "+ ", "[command]")) or "crane " in text or "skopeo " in text:
            self.commands(line)
        if match := _PUSH_REFERS.match(text):
            self.push_repository = match.group(1)
            return
        if match := _DIGEST_SIZE.match(text):
            self.digest_size(match.group(1), match.group(2), line)
            return
        if match := _BK_LIST.match(text):
            self.vertex(match.group(1)).lists.append((match.group(2), line))
            return
        if match := _BK_MANIFEST.match(text):
            self.vertex(match.group(1)).manifests.append(match.group(2))
            return
        if match := _BK_NAMING.match(text):
            vertex = self.vertex(match.group(1))
            vertex.names.extend((name.strip(), line) for name in match.group(2).split(",")[:100] if name.strip())
            return
        if match := _BK_PUSHING.match(text):
            vertex = self.vertex(match.group(1))
            vertex.pushed = True
            if match.group(2) is not None:
                self.buildkit_push(match.group(2), match.group(3), line)
            return
        if match := _DIGEST_REF.match(text):
            self.digest_reference(match.group(1), match.group(2), line)
            return
        if (match := _BARE_DIGEST.match(text)) and self.skopeo_target is not None:
            self.sight(self.skopeo_target, match.group(1), "skopeo copy --digestfile", line)
            self.skopeo_target = None

    def digest_size(self, name: str, digest: str, line: LogLine) -> None:
        if "/" in name:  # crane (go-containerregistry) logs the whole reference: `REF: digest: ... size: N`
            ref = _tagged(name)
            if ref is None:
                self.problem(name, [digest], "pushed reference is not a valid IMAGE:TAG", line)
            else:
                self.sight(ref, digest, "crane push log", line)
            return
        if self.push_repository is None:  # docker push: `TAG: digest: ... size: N`
            self.problem(name, [digest], "tag pushed with no `The push refers to repository` line before it", line)
            return
        ref = _tagged(f"{self.push_repository}:{name}")
        if ref is None:
            self.problem(f"{self.push_repository}:{name}", [digest], "pushed reference fails the grammar", line)
        else:
            self.sight(ref, digest, "docker push", line)

    def buildkit_push(self, name: str, digest: str, line: LogLine) -> None:
        ref = _tagged(name)
        if ref is None:
            self.problem(name, [digest], "BuildKit pushed a name that is not a valid IMAGE:TAG", line)
        else:
            self.sight(ref, digest, "buildkit pushing manifest", line)

    def digest_reference(self, name: str, digest: str, line: LogLine) -> None:
        """`REPO@sha256:…` on its own line: crane push prints it; so does a pull by digest (never ours)."""
        candidates = [target for target in self.crane_targets if _same_repository(target, name)]
        if not candidates:
            return
        tags = {target.tag for target in candidates}
        if len(tags) > 1:
            self.problem(name, [digest], f"crane pushed to several tags of this repository ({len(tags)})", line)
            return
        self.sight(candidates[-1], digest, "crane push", line)

    def vertex(self, number: str) -> _Vertex:
        return self.vertices.setdefault(number, _Vertex())

    def finish(self) -> None:
        if self.group is not None:
            self.close_group()
        for vertex in self.vertices.values():
            vertex.tie(self)


def _same_repository(target: ImageRef, name: str) -> bool:
    try:
        ref = ImageRef.parse(name)
    except AuditError:
        return False
    return ref.image == target.image and not _names_tag(name)


@dataclass
class _Vertex:
    """One BuildKit vertex (`#12 ...`): what it exported, the names it gave, whether it pushed."""

    lists: list[tuple[str, LogLine]] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    names: list[tuple[str, LogLine]] = field(default_factory=list)
    pushed: bool = False

    def tie(self, scanner: _StepScanner) -> None:
        if not self.names or not self.pushed:
            return  # exported without a push (e.g. --load) proves nothing about a registry
        lists = list(dict.fromkeys(digest for digest, _ in self.lists))
        manifests = list(dict.fromkeys(self.manifests))
        candidates = lists or manifests
        for name, line in self.names:
            if len(candidates) != 1:
                reason = (
                    f"BuildKit exported {len(lists)} manifest lists and {len(manifests)} manifests with this name"
                    if candidates
                    else "BuildKit named this image without exporting a manifest digest"
                )
                scanner.problem(name, candidates, reason, line)
                continue
            ref = _tagged(name)
            if ref is None:
                scanner.problem(name, candidates, "BuildKit named an image that is not a valid IMAGE:TAG", line)
            else:
                kind = "buildkit manifest list + naming to" if lists else "buildkit manifest + naming to"
                scanner.sight(ref, candidates[0], kind, line)


def analyse_job(job: str, steps: Sequence[tuple[str | None, str]]) -> JobEvidence:
    """Every pushed digest of one job. `steps` are (step name or None, log text) in order."""
    sightings: list[Sighting] = []
    evidence = JobEvidence()
    for step, text in steps:
        scanner = _StepScanner(job, step, sightings, evidence.unresolved)
        for line in log_lines(text):
            if line.section is not None and step is None:
                scanner.finish()
                scanner = _StepScanner(job, line.section, sightings, evidence.unresolved)
            if line.text.startswith("##[group]Run ") and step is None and scanner.group is None:
                # A single-file GitHub log: each step opens with its `Run ...` group.
                scanner.finish()
                scanner = _StepScanner(
                    job, line.text.removeprefix("##[group]Run ")[:120], sightings, evidence.unresolved
                )
            scanner.feed(line)
        scanner.finish()
    _tie(sightings, evidence)
    return evidence


def _tie(sightings: list[Sighting], evidence: JobEvidence) -> None:
    by_tag: dict[tuple[str, str], list[Sighting]] = {}
    tagless: list[Sighting] = []
    for sighting in sightings:
        if sighting.ref is None:
            tagless.append(sighting)
        else:
            by_tag.setdefault((sighting.ref.image, sighting.ref.tag or ""), []).append(sighting)
    tied: set[Digest] = set()
    for group in by_tag.values():
        digests = list(dict.fromkeys(sighting.digest for sighting in group))
        first = group[0]
        assert first.ref is not None
        if len(digests) > 1:
            evidence.unresolved.append(
                Unresolved(
                    first.ref.familiar,
                    tuple(digests),
                    f"the same job pushed this tag with {len(digests)} different digests",
                    first.where,
                )
            )
            continue
        tied.add(digests[0])
        ref = ImageRef(
            registry=first.ref.registry, repository=first.ref.repository, tag=first.ref.tag, digest=digests[0]
        )
        corroborating = [sighting for sighting in tagless if sighting.digest == digests[0]]
        evidence.pushed.append(PushedDigest(ref, (*group, *corroborating)))
    for sighting in tagless:
        if sighting.digest not in tied:
            evidence.unresolved.append(
                Unresolved("(no tag)", (sighting.digest,), f"{sighting.kind} names no tag", sighting.where)
            )

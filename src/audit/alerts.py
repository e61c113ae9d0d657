"""Pure rendering of decided findings into SNS messages: a text per protocol (e-mail, chat, machines),
one alert verdict and one repository per message, every message safely under the SNS size limit."""

from __future__ import annotations

import json
import string
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from audit.drift import platform_changes
from audit.models import Digest, ImageRef, Notice, Verdict, iso_utc
from audit.packages import index_of, is_package_registry, parse_filename
from audit.records import Finding
from audit.reference import DOCKER_HUB_API_HOST, familiar_name, is_valid_image, is_valid_tag
from audit.untrusted import printable, shell_word

#: SNS takes 256 KiB per message and per PublishBatch call; stay well under, attributes and subject included.
MAX_MESSAGE_BYTES = 240_000
#: SNS wants a subject under 100 characters, without line breaks or control characters.
MAX_SUBJECT_CHARS = 99
SCHEMA_VERSION = 1

#: What a message is about: a verdict, or Notice.RESOLVED for the notices that close earlier alerts (whatever
#: the tag's verdict now); its value is the message's `verdict` attribute.
type AlertVerdict = Verdict | Notice

VERDICT_ORDER: tuple[AlertVerdict, ...] = (
    Verdict.DRIFT,
    Verdict.MISSING,
    Verdict.UNVERIFIABLE,
    Verdict.UNTRACKED,
    Verdict.YANKED,
    Notice.RESOLVED,
)
SEVERITY: dict[AlertVerdict, str] = {
    Verdict.DRIFT: "high",
    Verdict.MISSING: "high",
    Verdict.UNVERIFIABLE: "medium",
    Verdict.UNTRACKED: "medium",
    Verdict.YANKED: "info",  # package files only: a notice, never counted as a problem
    Notice.RESOLVED: "info",
}

# Room kept for the "part i of n" labels, which are only known after splitting.
_PART_LABEL_RESERVE = 512
# Chat clients truncate long posts; the e-mail and machine texts carry everything.
_CHAT_DESCRIPTION_CHARS = 3000
_CHAT_MAX_FINDINGS = 10
_PRINTABLE = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")
_RULE = "-" * 72
#: One line of an e-mail, a chat post or the default text: untrusted parts are escaped and bounded to this.
_LINE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One SNS message: `message_json` is the MessageStructure=json body (one string per protocol)."""

    subject: str
    message_json: str
    attributes: dict[str, str]
    findings: tuple[Finding, ...] = ()  # what this message carries: accepted by SNS means these were alerted

    @property
    def size_bytes(self) -> int:
        """What SNS counts against its limit: body, subject and attributes (name, type and value)."""
        attributes = sum(len(k.encode()) + len("String") + len(v.encode()) for k, v in self.attributes.items())
        return len(self.message_json.encode()) + len(self.subject.encode()) + attributes

    def protocol(self, name: str) -> str:
        """The text one protocol receives (`default`, `email`, `https`, `sqs`, `lambda`)."""
        value = json.loads(self.message_json)[name]
        if not isinstance(value, str):
            raise TypeError(f"protocol {name!r} does not hold a string")
        return value


def render(
    run_id: str, findings: Sequence[Finding], *, total_tags: int, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[AlertMessage]:
    """Group findings per (alert verdict, registry, repository), split to fit, render every protocol.

    One repository per message (rather than a "multiple" attribute) keeps the `verdict`, `registry` and
    `repository` attributes exact, so an SNS filter policy on any of them receives exactly its findings.
    """
    if not run_id:
        raise ValueError("run_id must not be empty (it is a message attribute)")
    groups: dict[tuple[AlertVerdict, str, str], list[Finding]] = defaultdict(list)
    for finding in findings:
        groups[(finding.alert_verdict, finding.registry, finding.repository)].append(finding)
    messages: list[AlertMessage] = []
    for key in sorted(groups, key=lambda k: (_verdict_rank(k[0]), k[1], k[2])):
        group = _Group(run_id, *key, total_tags=total_tags)
        ordered = sorted(groups[key], key=lambda f: (f.tag or "", f.reference))
        chunks = _split(ordered, group.build, max_bytes - _PART_LABEL_RESERVE)
        for index, chunk in enumerate(chunks, start=1):
            message = group.build(chunk, index, len(chunks))
            if message.size_bytes > max_bytes:  # the reserve makes this unreachable; never hand SNS a reject
                raise ValueError(f"alert message of {message.size_bytes} bytes exceeds {max_bytes}")
            messages.append(message)
    return messages


@dataclass(frozen=True, slots=True)
class _Group:
    """What every message of one (verdict, registry, repository) group shares."""

    run_id: str
    verdict: AlertVerdict
    registry: str
    repository: str
    total_tags: int

    @property
    def image(self) -> str:
        return familiar_name(self.registry, self.repository)

    def build(self, findings: Sequence[Finding], part: int = 1, parts: int = 1) -> AlertMessage:
        return _message(self, findings, part=part, parts=parts)


def _verdict_rank(verdict: AlertVerdict) -> int:
    return VERDICT_ORDER.index(verdict) if verdict in VERDICT_ORDER else len(VERDICT_ORDER)


def _split(
    findings: Sequence[Finding], build: Callable[[Sequence[Finding]], AlertMessage], limit: int
) -> list[list[Finding]]:
    """Greedy chunks that fit `limit`, guessing each chunk's size from the previous measurement."""
    chunks: list[list[Finding]] = []
    rest = list(findings)
    per_finding: float | None = None
    while rest:
        count = len(rest) if per_finding is None else max(1, min(len(rest), int(limit / per_finding)))
        while True:
            chunk = rest[:count]
            size = build(chunk).size_bytes
            per_finding = size / count
            if size <= limit:
                break
            if count == 1:
                chunk = [_shrunk(chunk[0])]
                if build(chunk).size_bytes > limit:
                    raise ValueError(f"the finding for {chunk[0].reference} cannot fit in one alert message")
                break
            count = max(1, min(count - 1, int(count * limit / size * 0.97)))
        chunks.append(chunk)
        rest = rest[len(chunk) :]
    return chunks


def _shrunk(finding: Finding) -> Finding:
    """A finding too large for a message on its own loses its platform maps and most of its reason."""
    reason = finding.reason
    if reason is not None and len(reason) > 1000:
        reason = reason[:997] + "..."
    return finding.model_copy(update={"platforms": None, "trusted_platforms": None, "reason": reason})


def _message(group: _Group, findings: Sequence[Finding], *, part: int, parts: int) -> AlertMessage:
    subject = subject_for(
        group.verdict,
        group.registry,
        group.repository,
        findings,
        total_tags=group.total_tags,
        part=part,
        parts=parts,
    )
    machine = json.dumps(machine_payload(group.run_id, findings), separators=(",", ":"))
    chat = _chat_notification(group, subject, findings, part=part)
    body = {
        "default": _default_text(subject, group.run_id, findings),
        "email": _email_text(group, subject, findings, part=part, parts=parts),
        "https": json.dumps(chat, separators=(",", ":")),
        "sqs": machine,
        "lambda": machine,
    }
    attributes = {
        "verdict": group.verdict.value,
        "severity": SEVERITY.get(group.verdict, "medium"),
        "registry": group.registry,
        "repository": group.repository,
        "notice": _notice_attribute(group.verdict, findings),
        "run_id": group.run_id,
        # Every finding's stable id, space-separated: a subscriber drops a message whose ids it has all seen.
        "finding_ids": " ".join(f.finding_id for f in findings if f.finding_id) or "-",
    }
    return AlertMessage(
        subject=subject,
        message_json=json.dumps(body, separators=(",", ":")),
        attributes=attributes,
        findings=tuple(findings),
    )


def _notice_attribute(verdict: AlertVerdict, findings: Sequence[Finding]) -> str:
    """`new` if anything in the message is news, `reminder` if all of it was said before."""
    if verdict is Notice.RESOLVED:
        return Notice.RESOLVED.value
    if all(f.notice is Notice.REMINDER for f in findings):
        return Notice.REMINDER.value
    return Notice.NEW.value


# --------------------------------------------------------------------------------------------------- subject


def subject_for(
    verdict: AlertVerdict,
    registry: str,
    repository: str,
    findings: Sequence[Finding],
    *,
    total_tags: int,
    part: int = 1,
    parts: int = 1,
) -> str:
    """e.g. `DRIFT: openzaak/open-zaak:1.3.5 (1 of 42 tags)`; the name is shortened first when too long."""
    head = f"{verdict.value.upper()}: "
    if findings and all(f.notice is Notice.REMINDER for f in findings):
        head = f"[reminder] {head}"
    if len(findings) == 1:
        name = findings[0].reference
        tail = f" (1 of {total_tags} tags)"
    else:
        head += f"{len(findings)} tags in "
        name = familiar_name(registry, repository)
        tail = f" (of {total_tags})"
    if parts > 1:
        tail += f" [{part}/{parts}]"
    return _fit_subject(_ascii(head), _ascii(name), _ascii(tail))


def _ascii(text: str) -> str:
    """Controls escaped visibly (`\\x1b`), anything else outside printable ASCII as `?`: SNS subjects are ASCII."""
    return "".join(ch if ch in _PRINTABLE else "?" for ch in printable(text))


def _fit_subject(head: str, name: str, tail: str) -> str:
    room = MAX_SUBJECT_CHARS - len(head) - len(tail)
    if len(name) <= room:
        return head + name + tail
    if room >= 4:
        return head + name[: room - 3] + "..." + tail
    whole = head + name + tail
    return whole[: MAX_SUBJECT_CHARS - 3] + "..."


# --------------------------------------------------------------------------------------------------- machines


def _digests(platforms: Mapping[str, Digest] | None) -> dict[str, str] | None:
    return None if platforms is None else {name: str(platforms[name]) for name in sorted(platforms)}


def machine_finding(finding: Finding) -> dict[str, object]:
    """The machine form of one finding: the `check --json` fields plus the evidence and the notice.

    Package findings also carry `yanked` (PEP 592, as `check --json` does): the reason the index gives for
    serving the file yanked ("" for none), null when it does not; image findings keep their fields unchanged.
    """
    machine: dict[str, object] = {
        "id": finding.finding_id,
        "reference": finding.reference,
        "registry": finding.registry,
        "repository": finding.repository,
        "tag": finding.tag,
        "trusted_digest": str(finding.trusted_digest) if finding.trusted_digest else None,
        "live_digest": str(finding.live_digest) if finding.live_digest else None,
        "status": finding.status.value,
        "reason": finding.reason,
        "checked_at": iso_utc(finding.checked_at),
        "platforms": _digests(finding.platforms),
        "source": finding.source,
        "commit": finding.commit,
        "recorded_at": iso_utc(finding.recorded_at),
        "first_seen": iso_utc(finding.first_seen),
        "notice": finding.notice.value,
    }
    if is_package_registry(finding.registry):
        machine["yanked"] = finding.yanked
    return machine


def machine_payload(run_id: str, findings: Sequence[Finding]) -> dict[str, object]:
    """What SQS and Lambda subscribers receive (schema_version 1)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "findings": [machine_finding(f) for f in findings],
    }


# --------------------------------------------------------------------------------------------------- people


def _commands_allowed(finding: Finding) -> bool:
    """Commands are built only for names inside the grammar; anything else is shown, escaped, but never run."""
    if not is_valid_image(finding.registry, finding.repository):
        return False
    return finding.tag is None or is_valid_tag(finding.tag)


def _pull_name(finding: Finding) -> str:
    """`image:tag` as crane and docker accept it."""
    return ImageRef(registry=finding.registry, repository=finding.repository, tag=finding.tag).familiar


def _skopeo_name(finding: Finding) -> str:
    """skopeo wants a fully qualified name (short names go through registries.conf)."""
    registry = "docker.io" if finding.registry == DOCKER_HUB_API_HOST else finding.registry
    text = f"{registry}/{finding.repository}"
    return f"{text}:{finding.tag}" if finding.tag else text


def _image_at(finding: Finding, digest: Digest) -> str:
    return f"{familiar_name(finding.registry, finding.repository)}@{digest}"


def _package_release(finding: Finding) -> str:
    """`PROJECT==VERSION` of a package finding, as pip takes it (the version from the validated filename)."""
    name = parse_filename(finding.tag or "")
    return f"{finding.repository}=={name.version}" if name is not None else finding.repository


def package_confirm_commands(finding: Finding) -> list[str]:
    """Download exactly what the index serves and hash it, without trusting this tool."""
    if not is_valid_image(finding.registry, finding.repository):
        return []
    index = shell_word(index_of(finding.registry))
    commands = [
        f"pip download --no-deps --index-url {index} --dest digest-audit-check {shell_word(_package_release(finding))}"
    ]
    if parse_filename(finding.tag or "") is not None:
        commands.append(f"sha256sum digest-audit-check/{shell_word(finding.tag or '')}")
    return commands


def _package_fix_commands(finding: Finding) -> list[str]:
    if finding.tag is None or finding.notice is Notice.RESOLVED or not package_confirm_commands(finding):
        return []
    release = shell_word(f"pypi:{_package_release(finding)}")
    index = shell_word(index_of(finding.registry))
    if finding.status is Verdict.DRIFT:
        return [
            f"restore:  upload the CI-built {shell_word(finding.tag)} again (yank or delete the served one first)",
            f'accept:   digest-audit record {release} --index-url {index} --dist DIR --replace --reason "WHY" '
            '--source "CI RUN URL"',
        ]
    if finding.status is Verdict.UNTRACKED:
        return [
            f"remove:   yank or delete {shell_word(finding.tag)} in the index (PyPI: Manage project > Releases)",
            f'record:   digest-audit record {release} --index-url {index} --dist DIR --source "CI RUN URL"',
        ]
    return []  # a yank notice included: nothing to restore or accept, the next steps say whom to ask


def confirm_commands(finding: Finding) -> list[str]:
    """Commands a person can run to see the live digest without trusting this tool.

    Every interpolated value is one quoted shell word (`shell_word`), and only names inside the grammar get
    commands at all: what a registry lists is pasted into a responder's shell.
    """
    if is_package_registry(finding.registry):
        return package_confirm_commands(finding)
    if not _commands_allowed(finding):
        return []
    name = shell_word(_pull_name(finding))
    commands = [
        f"crane digest {name}",
        f"docker buildx imagetools inspect {name}",
        f"skopeo inspect --raw {shell_word('docker://' + _skopeo_name(finding))} | sha256sum",
    ]
    changes = platform_changes(finding.trusted_platforms, finding.platforms)
    if changes is not None:
        commands.extend(f"crane digest --platform {shell_word(p)} {name}" for p in changes.changed[:3])
    return commands


def _platform_line(finding: Finding) -> str | None:
    if finding.live_digest is None or finding.live_digest == finding.trusted_digest:
        return None
    changes = platform_changes(finding.trusted_platforms, finding.platforms)
    if changes is not None:
        return changes.describe()
    if finding.platforms is not None:
        return f"{len(finding.platforms)} in the live index (none recorded at trust time)"
    return None


def _fix_commands(finding: Finding) -> list[str]:
    """Concrete commands to restore or to accept what the registry serves, for the verdicts that have them."""
    if is_package_registry(finding.registry):
        return _package_fix_commands(finding)
    if finding.tag is None or finding.notice is Notice.RESOLVED or not _commands_allowed(finding):
        return []
    commands: list[str] = []
    tag = shell_word(finding.tag)
    if finding.trusted_digest is not None and finding.status in (Verdict.DRIFT, Verdict.MISSING):
        commands.append(f"restore:  crane tag {shell_word(_image_at(finding, finding.trusted_digest))} {tag}")
    if finding.live_digest is not None and finding.status is Verdict.DRIFT:
        commands.append(
            f"accept:   digest-audit record {shell_word(f'{_pull_name(finding)}@{finding.live_digest}')} "
            '--replace --reason "WHY" --source "CI RUN URL"'
        )
    if finding.live_digest is not None and finding.status is Verdict.UNTRACKED:
        commands.append(
            f"record:   digest-audit record {shell_word(f'{_pull_name(finding)}@{finding.live_digest}')} "
            '--source "CI RUN URL"'
        )
        commands.append(
            f"ignore:   digest-audit watch {shell_word(familiar_name(finding.registry, finding.repository))} "
            f"--ignore {shell_word(finding.tag)}"
        )
    return commands


_INTRO: dict[AlertVerdict, str] = {
    Verdict.DRIFT: "The registry serves a different image than CI recorded for these tags. "
    "Treat this as a possible compromise until it is explained.",
    Verdict.MISSING: "The registry no longer serves these recorded tags.",
    Verdict.UNVERIFIABLE: "The audit could not establish what these tags serve: it cannot say they are unchanged.",
    Verdict.UNTRACKED: "The registry has tags nobody recorded as trusted.",
    Notice.RESOLVED: "These earlier alerts are resolved: the tags verify again (or are no longer audited).",
}

NEXT_STEPS: dict[AlertVerdict, tuple[str, ...]] = {
    Verdict.DRIFT: (
        "Do not deploy or promote these tags; deploy by the trusted digest (IMAGE@TRUSTED_DIGEST) instead.",
        "Confirm by hand with the commands shown, and compare the live image with the CI build named in "
        "source and commit: who pushed it, when, from which pipeline? Check the registry's audit log.",
        "If nobody can explain it: rotate the registry push credentials and CI tokens, then re-push the "
        "trusted digest to the tag (the restore command).",
        "If it is a legitimate rebuild: record it with `digest-audit record IMAGE:TAG@LIVE_DIGEST --replace "
        "--reason ...` (the accept command); the old record stays as history.",
    ),
    Verdict.MISSING: (
        "Find out whether the tag was deleted on purpose: registry audit log, retention or lifecycle "
        "policies (e.g. ECR lifecycle rules), cleanup jobs.",
        "Deployments that pull this tag will fail; pin them to the trusted digest if it still exists.",
        "If the tag should exist, re-push the trusted digest (the restore command) or re-run the CI release.",
        "If it was retired on purpose, remove its trusted record so the audit stops checking it.",
    ),
    Verdict.UNVERIFIABLE: (
        "Run the confirm commands from a machine with registry access: the tag may have changed unnoticed.",
        "Check the credentials (the registry credentials secret, expired tokens, ECR permissions).",
        "Check the network (DNS, TLS, proxies, VPC endpoints) and rate limits (Docker Hub quota, HTTP 429).",
        "When every tag of a registry fails at once, suspect credentials or network before the tags.",
    ),
    Verdict.UNTRACKED: (
        "Find out who pushed these tags and from which pipeline.",
        "If they are legitimate releases, record them (the record command) so they are audited from now on.",
        "If they should never be audited (e.g. nightly builds), add an ignore pattern with "
        "`digest-audit watch IMAGE --ignore 'PATTERN'`.",
        "If nobody pushed them knowingly, treat them like a drift: remove them and rotate push credentials.",
    ),
    Notice.RESOLVED: (
        "No action is needed for these tags now.",
        "If deployments were paused for the earlier alert, make sure its explanation is on record first.",
    ),
}


#: The package section: what a responder does about a package file (an upload token may have leaked).
PACKAGE_INTRO: dict[AlertVerdict, str] = {
    Verdict.DRIFT: "The package index serves a file with the same name but other content than CI built. "
    "Treat this as a possible compromise until it is explained.",
    Verdict.MISSING: "The package index no longer serves these recorded files.",
    Verdict.UNVERIFIABLE: "The audit could not establish what the index serves for these files: "
    "it cannot say they are unchanged.",
    Verdict.UNTRACKED: "The package index serves files nobody recorded: an added wheel in a recorded release, "
    "or a release nobody recorded.",
    Verdict.YANKED: "The package index serves these recorded files yanked (PEP 592): pip no longer picks them unless "
    "a requirement pins their exact version. This is a notice, not a drift: the status of the files is unchanged "
    "and they still match what CI built, unless another alert says otherwise.",
    Notice.RESOLVED: "These earlier package alerts are resolved.",
}

_ROTATE = (
    "Rotate the index upload token (PyPI: Account settings > API tokens). PyPI trusted publishing removes "
    "long-lived upload tokens altogether: publish from CI with OIDC instead."
)

PACKAGE_NEXT_STEPS: dict[AlertVerdict, tuple[str, ...]] = {
    Verdict.DRIFT: (
        "Do not install this release until it is explained; pin installs by hash (pip --require-hashes) "
        "to the trusted sha256.",
        "Confirm by hand: pip download the file and compare its sha256sum with the trusted digest.",
        "Yank or delete the served file in the index, then upload the CI-built file again.",
        _ROTATE,
    ),
    Verdict.MISSING: (
        "Find out who deleted the file or release (the index's audit log or project history).",
        "If it should exist, upload the CI-built file again; if it was retired on purpose, remove its record.",
    ),
    Verdict.UNVERIFIABLE: (
        "Run the confirm commands from a machine with index access: the file may have changed unnoticed.",
        "Check the index credentials (netrc, the credentials secret, CodeArtifact permissions) and the network.",
    ),
    Verdict.UNTRACKED: (
        "Find out who uploaded these files and from which pipeline (PyPI: the project's security history).",
        "If nobody uploaded them knowingly: yank or delete them at once; pip prefers a more specific wheel.",
        _ROTATE,
        "If they are legitimate, record them from the CI build (the record command).",
    ),
    Verdict.YANKED: (
        "Check who yanked the release and why: the yank reason shown, the project's maintainers and release "
        "notes, the index's audit log (PyPI: the project's security history).",
        "If nobody on the team yanked it, someone else holds a credential for the project: treat the upload "
        "token as leaked. " + _ROTATE,
        "If the yank was intended, nothing else is needed; a `resolved` notice follows if it is un-yanked.",
    ),
    Notice.RESOLVED: ("No action is needed for these files now.",),
}


def _intro(group: _Group) -> str:
    table = PACKAGE_INTRO if is_package_registry(group.registry) else _INTRO
    return table.get(group.verdict, "")


def _next_steps(registry: str, verdict: AlertVerdict) -> tuple[str, ...]:
    table = PACKAGE_NEXT_STEPS if is_package_registry(registry) else NEXT_STEPS
    return table.get(verdict, ())


def _default_text(subject: str, run_id: str, findings: Sequence[Finding]) -> str:
    lines = [subject]
    for finding in findings:
        live = str(finding.live_digest) if finding.live_digest else "-"
        trusted = str(finding.trusted_digest) if finding.trusted_digest else "-"
        line = f"- {finding.reference} [{finding.notice.value}]: {finding.status.value}"
        line += f"; live {live}; trusted {trusted}"
        if finding.reason:
            line += f"; {finding.reason}"
        lines.append(printable(line, max_chars=_LINE_CHARS))
    lines.append(f"run {run_id}")
    return "\n".join(lines)


def _email_text(group: _Group, subject: str, findings: Sequence[Finding], *, part: int, parts: int) -> str:
    lines = [subject, "", _intro(group), ""]
    counts = f"Run {group.run_id}: {len(findings)} finding(s) of {group.total_tags} audited tag(s)"
    lines.append(counts + (f", part {part} of {parts}" if parts > 1 else "") + ".")
    for number, finding in enumerate(findings, start=1):
        heading = printable(f"[{number}] {finding.reference} ({finding.notice.value})", max_chars=_LINE_CHARS)
        lines.extend(["", _RULE, heading, ""])
        lines.extend(_email_finding(finding))
    lines.extend(["", _RULE, "What to do next:"])
    lines.extend(f"  {n}. {step}" for n, step in enumerate(_next_steps(group.registry, group.verdict), start=1))
    lines.extend(["", "-- digest-audit"])
    return "\n".join(lines)


def _email_finding(finding: Finding) -> list[str]:
    def row(label: str, value: object) -> str:
        # Every value may carry what a registry or a recorder said: one visible line, controls escaped.
        return f"  {label + ':':<17}{printable(str(value), max_chars=_LINE_CHARS)}"

    package = is_package_registry(finding.registry)
    lines = [
        row("Package" if package else "Image", f"{finding.registry}/{finding.repository}"),
        row("File" if package else "Tag", finding.tag or "-"),
        row("Status", finding.status.value),
    ]
    if finding.reason:
        lines.append(row("Reason", finding.reason))
    if finding.yanked is not None:
        lines.append(row("Yanked", finding.yanked or "(no reason given)"))
    lines.append(row("Trusted digest", finding.trusted_digest or "- (not recorded)"))
    if finding.trusted_digest is not None:
        lines.append(row("  recorded at", iso_utc(finding.recorded_at) or "-"))
        lines.append(row("  source", finding.source or "-"))
        lines.append(row("  commit", finding.commit or "-"))
    lines.append(row("Live digest", finding.live_digest or "-"))
    lines.append(row("Checked at", iso_utc(finding.checked_at)))
    lines.append(row("First seen", iso_utc(finding.first_seen) or "-"))
    platforms = _platform_line(finding)
    if platforms is not None:
        lines.append(row("Platforms", platforms))
    if finding.notice is not Notice.RESOLVED:
        confirm = confirm_commands(finding)
        if confirm:
            lines.append("  Confirm by hand:")
            lines.extend(f"    {command}" for command in confirm)
        else:
            lines.append("  No commands: the name is outside the image name grammar, so it is not safe to paste.")
        fixes = _fix_commands(finding)
        if fixes:
            lines.append("  Then, depending on what you find:")
            lines.extend(f"    {command}" for command in fixes)
    return lines


def _chat_notification(group: _Group, subject: str, findings: Sequence[Finding], *, part: int) -> dict[str, object]:
    """An AWS Chatbot (Amazon Q Developer in chat applications) custom notification."""
    lines: list[str] = []
    used = 0
    for shown, finding in enumerate(findings):
        line = _chat_line(finding)
        if shown == 0 and len(line) > _CHAT_DESCRIPTION_CHARS:
            line = line[: _CHAT_DESCRIPTION_CHARS - 3] + "..."
        if shown >= _CHAT_MAX_FINDINGS or used + len(line) > _CHAT_DESCRIPTION_CHARS:
            lines.append(f"...and {len(findings) - shown} more in the e-mail and machine messages.")
            break
        lines.append(line)
        used += len(line) + 1
    verdict = group.verdict.value
    return {
        "version": "1.0",
        "source": "custom",
        "id": f"{group.run_id}:{verdict}:{group.registry}/{group.repository}:{part}",
        "content": {
            "textType": "client-markdown",
            "title": subject,
            "description": "\n".join(lines),
            "nextSteps": _chat_steps(group.registry, group.verdict, findings),
            "keywords": [verdict, SEVERITY.get(group.verdict, "medium"), group.image],
        },
        "metadata": {
            # One thread per repository: the alert, its reminders and its resolution read as one story.
            "threadId": f"digest-audit/{group.registry}/{group.repository}",
            "summary": subject,
            "eventType": f"digest-audit.{verdict}",
        },
    }


def _chat_steps(registry: str, verdict: AlertVerdict, findings: Sequence[Finding]) -> list[str]:
    steps = list(_next_steps(registry, verdict))
    commands = confirm_commands(findings[0]) if len(findings) == 1 and verdict is not Notice.RESOLVED else []
    if commands:
        steps.insert(0, f"Confirm by hand: `{commands[0]}`")
    return steps


def _chat_line(finding: Finding) -> str:
    parts = [f"*`{finding.reference}`* ({finding.status.value}, {finding.notice.value})"]
    if finding.live_digest is not None:
        parts.append(f"live `{finding.live_digest.short}`")
    if finding.trusted_digest is not None:
        parts.append(f"trusted `{finding.trusted_digest.short}`")
    text = " - ".join(parts)
    if finding.reason:
        text += f": {finding.reason}"
    return f"• {printable(text, max_chars=_LINE_CHARS)}"

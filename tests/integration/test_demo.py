"""`make demo` end to end: it tells the whole story, checks its own claims, and leaves nothing running.

The demo runs as a subprocess exactly as `make demo` runs it (`python -m demo.run` from the project root).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.services import processes_under

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 180
TAMPERED = "openzaak/open-zaak:1.4.0"
#: The release swapped in the push-event chapter, once the audit function consumes the push-event queue.
SWAPPED_NEXT = "openzaak/open-notificaties:1.5.0"
PUSH_EVENTS = "Push events: the next swap is caught seconds after the push, not at the next hour"
#: Only what a shell would pass on; the pytest session's AWS variables (moto fixtures) must not leak in.
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def workdir(self) -> str:
        return _workdir(self.stdout)

    def section(self, heading: str) -> str:
        """The text of one numbered section, from its heading to the next one."""
        match = re.search(rf"^\d+\. {re.escape(heading)}\n=+\n(.*?)(?=^\d+\. |\Z)", self.stdout, re.M | re.S)
        assert match is not None, f"no section {heading!r} in the demo output"
        return match.group(1)


def _environment() -> dict[str, str]:
    env = {name: os.environ[name] for name in _KEPT if name in os.environ}
    env["NO_COLOR"] = "1"
    return env


def _workdir(stdout: str) -> str:
    match = re.search(r"work directory:\s+(\S+)", stdout)
    assert match is not None, "the demo did not print its work directory"
    return match.group(1)


def _alive_with(pid: int, marker: str) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return marker in command


def run_demo(*args: str) -> DemoRun:
    finished = subprocess.run(
        [sys.executable, "-m", "demo.run", *args],
        cwd=PROJECT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    return DemoRun(finished.returncode, finished.stdout, finished.stderr)


@pytest.fixture(scope="module")
def demo() -> DemoRun:
    return run_demo()


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_demo_succeeds_and_says_so(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.stderr
    assert "demo failed" not in demo.stderr
    assert re.search(r"^done in \d+\.\d s$", demo.stdout, re.M)


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_the_alert_names_exactly_the_tampered_tag(demo: DemoRun) -> None:
    alert = demo.section("The next hourly audit notices, and alerts once")
    subjects = re.findall(r'Subject"?:\s*"?(DRIFT: [^"\n]+)', alert)
    # The subject appears in the SQS envelope and in the e-mail headers: the same message, delivered twice.
    assert len(subjects) == 2
    assert all(re.fullmatch(rf"DRIFT: 127\.0\.0\.1:\d+/{re.escape(TAMPERED)} \(1 of 4 tags\)", s) for s in subjects)
    references = re.findall(r'"reference": "([^"]+)"', alert)
    assert len(references) == 1 and references[0].endswith(f"/{TAMPERED}")
    assert re.findall(r'"status": "(\w+)"', alert) == ["drift"]
    assert "changed linux/amd64" in alert  # the one platform the attacker replaced
    assert "Confirm by hand:" in alert  # the e-mail text, not only the machine JSON
    summary = demo.section("Summary")
    assert re.search(rf"^alerted:\s+127\.0\.0\.1:\d+/{re.escape(TAMPERED)} \(drift\)$", summary, re.M)
    assert re.search(r"^run 2 \(after the attack\):\s+4 checked \(1 drift, 3 match\), 1 alert", summary, re.M)


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_quiet_before_the_attack_and_no_duplicate_after(demo: DemoRun) -> None:
    summary = demo.section("Summary")
    assert re.search(r"^run 1 \(before the attack\):\s+4 checked \(4 match\), 0 alert", summary, re.M)
    assert re.search(r"^run 3 \(an hour later\):\s+4 checked \(1 drift, 3 match\), 0 alert", summary, re.M)
    repeat = demo.section("An hour later: the drift persists, nobody is paged twice")
    assert '"alerts_published": 0' in repeat
    assert "no duplicate: 0 messages published, 0 new messages in the queue" in repeat
    assert "DRIFT:" not in repeat


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_queued_push_events_add_no_alert(demo: DemoRun) -> None:
    chapter = demo.section(PUSH_EVENTS)
    queued = chapter.partition("(b) ")[0]
    # One check request per push: CI's four releases and the first swap, each with the digest it pushed.
    request = r"^    distribution push 127\.0\.0\.1:\d+/(\S+)@(sha256:[0-9a-f]{12})  \(event time "
    pushed = re.findall(request, queued, re.M)
    releases = {TAMPERED, SWAPPED_NEXT, "openzaak/open-zaak:1.3.4", "openzaak/open-zaak:1.3.5"}
    assert {name for name, _ in pushed} == releases
    assert len({digest for name, digest in pushed if name == TAMPERED}) == 2  # CI's push, then the swap
    assert "DRIFT:" not in queued
    assert "ok: CI recorded each release seconds after its push" in queued
    assert "already alerted by run 2 (same state, same dedup): no duplicate." in queued
    summary = demo.section("Summary")
    batch = r"^batch 1 \(queued events\):\s+\d+ message\(s\), 4 checked \(1 drift, 3 match\), 0 alert"
    assert re.search(batch, summary, re.M)


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_the_next_swap_is_alerted_once_from_its_push_event(demo: DemoRun) -> None:
    chapter = demo.section(PUSH_EVENTS)
    swap = chapter.partition("(b) ")[2].partition("(c) ")[0]
    assert re.search(r"^registry -> receiver /hooks/distribution: 202 accepted ", swap, re.M)
    subjects = re.findall(r"^    Subject: (.+)$", swap, re.M)
    assert len(subjects) == 1
    assert re.fullmatch(rf"DRIFT: 127\.0\.0\.1:\d+/{re.escape(SWAPPED_NEXT)} \(1 of 1 tags\)", subjects[0])
    assert chapter.count("DRIFT:") == 1
    assert re.search(r"^    reason: .*platforms: changed linux/amd64$", swap, re.M)
    assert '"alerts_published": 1' in swap
    # The time from the push to the alert, measured by the demo, and the function's TimeToDetect metric.
    assert re.search(r"^time to detect:\s+\d+\.\d s from the push to the alert in the subscriber queue$", swap, re.M)
    assert re.search(r"^TimeToDetect:\s+\d+\.\d s \(the metric", swap, re.M)
    assert re.search(r"^metrics \(CloudWatch EMF\): .*TimeToDetect=\d", swap, re.M)
    summary = demo.section("Summary")
    assert re.search(r"^batch 2 \(the second swap\):\s+\d+ message\(s\), 1 checked \(1 drift\), 1 alert", summary, re.M)
    assert re.search(
        rf"^alerted from a push event:\s+127\.0\.0\.1:\d+/{re.escape(SWAPPED_NEXT)} \(drift\), "
        r"\d+\.\d s after the push \(TimeToDetect \d+\.\d s\)$",
        summary,
        re.M,
    )


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_the_next_scheduled_run_adds_no_duplicate_of_the_push_event_alert(demo: DemoRun) -> None:
    chapter = demo.section(PUSH_EVENTS)
    next_hour = chapter.partition("(c) ")[2]
    assert next_hour
    assert '"alerts_published": 0' in next_hour
    assert "DRIFT:" not in next_hour
    assert "ok: no duplicate: both drifts persist, both were alerted once; 0 messages published." in next_hour
    summary = demo.section("Summary")
    assert re.search(r"^run 4 \(the next hour\):\s+4 checked \(2 drift, 2 match\), 0 alert", summary, re.M)
    assert re.search(r"^duplicates:\s+none$", summary, re.M)
    # The chapter is timed with the others.
    assert re.search(rf"^    {re.escape(PUSH_EVENTS)}:\s+\d+\.\d s$", demo.stdout, re.M)


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_the_report_shows_the_drifted_tag_and_the_others_matching(demo: DemoRun) -> None:
    report = demo.section("The evidence table for the incident (digest-audit report)")
    assert report.startswith("$ digest-audit report --format table\n")
    # Columns: IMAGE TAG TRUSTED-DIGEST SOURCE RECORDED-AT LIVE-DIGEST VERDICT SINCE
    rows = [line.split() for line in report.splitlines() if line.startswith("127.0.0.1:")]
    verdicts = {f"{row[0].rsplit('/', 1)[1]}:{row[1]}": row[6] for row in rows}
    assert verdicts == {
        "open-zaak:1.3.4": "match",
        "open-zaak:1.3.5": "match",
        "open-zaak:1.4.0": "drift",
        "open-notificaties:1.5.0": "drift",
    }
    for row in rows:
        trusted, live = row[2], row[5]
        assert trusted.startswith("sha256:") and live.startswith("sha256:")
        assert (trusted == live) == (row[6] == "match")


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_ci_commands_are_shown_as_typed(demo: DemoRun) -> None:
    records = demo.section("CI records every trusted digest (digest-audit init, digest-audit record)")
    assert "$ digest-audit init --topic digest-audit-alerts" in records
    assert len(re.findall(r"^\$ digest-audit record 127\.0\.0\.1:\d+/\S+:\S+@sha256:[0-9a-f]{64} ", records, re.M)) == 4
    assert len(re.findall(r"^created: ", records, re.M)) == 4


@pytest.mark.timeout(DEMO_TIMEOUT + 30)
def test_nothing_is_left_behind(demo: DemoRun) -> None:
    workdir = demo.workdir
    assert not Path(workdir).exists()
    assert processes_under(workdir) == []
    pids = [int(pid) for pid in re.findall(r"docker-registry pid (\d+)", demo.stdout)]
    assert pids, "the demo did not print the registry's pid"
    assert not any(_alive_with(pid, workdir) for pid in pids)
    secrets_shown = re.findall(r'"password": ([^}\s]+)', demo.stdout)
    assert secrets_shown == ["<hidden>"]
    assert re.findall(r"Bearer (.+)", demo.stdout) == ["<the webhook token, hidden>]"]
    assert "receiver (Function URL)" in demo.section("Clean-up")


@pytest.mark.timeout(30)
def test_a_missing_registry_binary_says_how_to_install_it(tmp_path: Path) -> None:
    result = run_demo("--registry-binary", str(tmp_path / "docker-registry"))
    assert result.returncode == 2
    assert "apt-get install docker-registry" in result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(60)
def test_a_registry_that_fails_to_start_fails_the_demo_cleanly(tmp_path: Path) -> None:
    broken = tmp_path / "docker-registry"
    broken.write_text("#!/bin/sh\necho 'cannot start: simulated' >&2\nexit 3\n")
    broken.chmod(0o755)
    result = run_demo("--registry-binary", str(broken))
    assert result.returncode == 1
    assert "demo failed: docker-registry did not start" in result.stderr
    workdir = _workdir(result.stdout)
    assert not Path(workdir).exists()
    assert processes_under(workdir) == []


@pytest.mark.timeout(DEMO_TIMEOUT)
def test_sigterm_mid_run_stops_everything(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "demo.run"],
        cwd=PROJECT,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        seen: list[str] = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith("$ digest-audit record "):  # registry, token server and moto are all up now
                break
        workdir = _workdir("".join(seen))
        assert processes_under(workdir), "the registry should be running at this point"
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, errors
    assert "interrupted" in errors
    assert processes_under(workdir) == []
    assert not Path(workdir).exists()
    assert "Summary" not in rest

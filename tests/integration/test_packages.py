"""Python package releases audited end to end: a real pypiserver (overwrite allowed) fed by twine, and a
loopback server answering in PyPI's recorded formats (PEP 691 JSON, error and login pages, a huge page)."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest

from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.models import Verdict
from tests.support.cli_runner import CliRunner
from tests.support.package_index import DevpiServer, PypiServer, RecordedIndex, Route, build_sdist, build_wheel

pytestmark = pytest.mark.integration

SOURCE = "https://ci.example/org/lib/runs/7"
WHEEL = "demo_pkg-1.0-py3-none-any.whl"
SDIST = "demo_pkg-1.0.tar.gz"


@pytest.fixture
def cli(loopback_cli: CliRunner) -> CliRunner:
    """The CLI with loopback indexes allowed over plain http and no developer netrc or docker config."""
    return loopback_cli


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def built(directory: Path, version: str = "1.0", content: str = "1") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [build_wheel(directory, "demo-pkg", version, content=content), build_sdist(directory, "demo-pkg", version)]


class Audit:
    """A recorded release and local stores: `run()` audits it as the Lambda would, printing the alerts."""

    def __init__(self, cli: CliRunner, tmp_path: Path, index_url: str) -> None:
        self.cli = cli
        self.index_url = index_url
        self.trust = tmp_path / "trust.json"
        self.state = tmp_path / "state.json"

    def record(self, dist: Path, spec: str = "pypi:demo-pkg==1.0") -> str:
        result = self.cli(
            "record", spec, "--dist", dist, "--source", SOURCE, "--commit", "c0ffee",
            "--index-url", self.index_url, "--trust-file", self.trust,
        )  # fmt: skip
        assert result.code == 0, result.err
        return result.out

    def run(self) -> tuple[int, str, str]:
        result = self.cli("run", "--trust-file", self.trust, "--state-file", self.state)
        return result.code, result.out, result.err

    def verdicts(self) -> dict[str, Verdict]:
        return {tag: state.last_verdict for (_, tag), state in FileStateStore(self.state).load_all().items()}


# --------------------------------------------------------------------------------------------------- pypiserver


@pytest.fixture
def released(cli: CliRunner, tmp_path: Path, pypi_server: PypiServer) -> Audit:
    """demo-pkg 1.0 (wheel and sdist) built, uploaded with twine, recorded from dist/."""
    files = built(tmp_path / "dist")
    pypi_server.upload(*files)
    audit = Audit(cli, tmp_path, pypi_server.index_url)
    out = audit.record(tmp_path / "dist")
    assert out.splitlines() == [
        f"created: pypi:{pypi_server.index_url}/demo-pkg/{path.name} {sha256(path)}" for path in sorted(files)
    ]
    return audit


def test_a_clean_release_matches_and_check_lists_every_file(
    released: Audit, cli: CliRunner, tmp_path: Path, pypi_server: PypiServer
) -> None:
    code, out, err = released.run()
    assert (code, out) == (0, ""), err
    assert released.verdicts() == {WHEEL: Verdict.MATCH, SDIST: Verdict.MATCH}
    record = FileTrustStore(released.trust).get(f"pypi:{pypi_server.index_url}/demo-pkg", WHEEL)
    assert record is not None and (record.source, record.commit) == (SOURCE, "c0ffee")

    result = cli("check", "--json", "pypi:demo-pkg==1.0", "--index-url", pypi_server.index_url)
    assert result.code == 0, result.err
    rows = {row["filename"]: (row["status"], row["live_digest"]) for row in json.loads(result.out)}
    assert rows == {path.name: ("resolved", sha256(path)) for path in (tmp_path / "dist").iterdir()}


def test_an_overwritten_file_is_drift_with_both_hashes_alerted_once(
    released: Audit, tmp_path: Path, pypi_server: PypiServer
) -> None:
    trusted = sha256(tmp_path / "dist" / WHEEL)
    [evil, _] = built(tmp_path / "evil", content="stolen token")
    pypi_server.upload(evil)  # --overwrite: same filename, other bytes

    code, out, _ = released.run()
    assert code == 1
    assert f"- pypi:{pypi_server.index_url}/demo-pkg/{WHEEL} [new]: drift" in out
    assert f"live {sha256(evil)}; trusted {trusted}" in out
    assert released.verdicts()[WHEEL] is Verdict.DRIFT
    code, out, _ = released.run()
    assert (code, out) == (1, "")  # the same problem is not alerted twice


def test_an_extra_wheel_in_a_recorded_release_is_untracked(
    released: Audit, tmp_path: Path, pypi_server: PypiServer
) -> None:
    extra = build_wheel(tmp_path, "demo-pkg", "1.0", tag="cp313-cp313-manylinux_2_17_x86_64", content="x")
    pypi_server.upload(extra)

    code, out, _ = released.run()
    assert code == 0
    assert f"- pypi:{pypi_server.index_url}/demo-pkg/{extra.name} [new]: untracked" in out
    assert "a file in recorded release 1.0 that CI did not record" in out
    assert released.verdicts()[extra.name] is Verdict.UNTRACKED


def test_a_new_release_is_untracked_only_when_the_project_tracks_new_releases(
    released: Audit, cli: CliRunner, tmp_path: Path, pypi_server: PypiServer
) -> None:
    pypi_server.upload(*built(tmp_path / "dist-1.1", version="1.1"))
    assert released.run()[:2] == (0, "")

    result = cli(
        "watch", "pypi:demo-pkg", "--index-url", pypi_server.index_url, "--track-new-releases",
        "--trust-file", released.trust,
    )  # fmt: skip
    assert result.out == f"pypi:{pypi_server.index_url}/demo-pkg\n  track new releases: yes\n"
    code, out, _ = released.run()
    assert code == 0
    assert "UNTRACKED: 2 tags in" in out and "release 1.1 was never recorded" in out
    assert released.verdicts()["demo_pkg-1.1-py3-none-any.whl"] is Verdict.UNTRACKED


def test_a_deleted_file_is_missing(released: Audit, pypi_server: PypiServer) -> None:
    pypi_server.delete(SDIST)
    code, out, _ = released.run()
    assert code == 1
    assert f"- pypi:{pypi_server.index_url}/demo-pkg/{SDIST} [new]: missing" in out
    assert released.verdicts() == {WHEEL: Verdict.MATCH, SDIST: Verdict.MISSING}


def test_an_index_that_is_down_makes_every_file_unverifiable_at_once(released: Audit, pypi_server: PypiServer) -> None:
    pypi_server.stop()
    code, out, err = released.run()
    assert code == 3
    assert "UNVERIFIABLE: 2 tags in" in out  # the whole index failed: alerted on the first run
    assert "ConnectError" in err
    assert set(released.verdicts().values()) == {Verdict.UNVERIFIABLE}


def test_record_refuses_a_dist_directory_of_another_release(cli: CliRunner, tmp_path: Path) -> None:
    built(tmp_path / "dist", version="0.9")
    result = cli(
        "record", "pypi:demo-pkg==1.0", "--dist", tmp_path / "dist", "--source", SOURCE,
        "--trust-file", tmp_path / "trust.json",
    )  # fmt: skip
    assert result.code == 2
    assert "which is not demo-pkg==1.0" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "trust.json").exists()


def test_resolve_adopts_what_the_index_serves_and_says_so(
    cli: CliRunner, tmp_path: Path, pypi_server: PypiServer
) -> None:
    files = built(tmp_path / "dist")
    pypi_server.upload(*files)
    result = cli(
        "record", "--resolve", "pypi:demo-pkg==1.0", "--index-url", pypi_server.index_url, "--source", "adoption",
        "--trust-file", tmp_path / "trust.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.out.count("(resolved from the index now, not from a CI build)") == 2
    assert {r.tag: str(r.digest) for r in FileTrustStore(tmp_path / "trust.json").load_all()} == {
        path.name: sha256(path) for path in files
    }


# --------------------------------------------------------------------------------------------------- recorded formats


def pep691_page(
    index: RecordedIndex,
    files: dict[str, bytes],
    *,
    listed: dict[str, str] | None = None,
    yanked: dict[str, str | bool] | None = None,
) -> bytes:
    """A project page in PyPI's JSON simple API shape (PEP 691 with PEP 592 and PEP 700 fields); by default the
    sdist is yanked ("broken metadata")."""
    entries = []
    for name, data in files.items():
        index.routes[f"/files/{name}"] = Route(200, "application/octet-stream", data)
        digest = (listed or {}).get(name, hashlib.sha256(data).hexdigest())
        entries.append(
            {
                "filename": name,
                "url": f"http://{index.host}/files/{name}",
                "hashes": {"sha256": digest},
                "requires-python": ">=3.9",
                "yanked": (yanked or {}).get(name, False)
                if yanked is not None
                else ("broken metadata" if name.endswith(".tar.gz") else False),
                "size": len(data),
                "upload-time": "2026-11-20T10:00:00.000000Z",
                "data-dist-info-metadata": False,
            }
        )
    page = {
        "meta": {"api-version": "1.1", "_last-serial": 123},
        "name": "demo-pkg",
        "files": entries,
        "versions": ["1.0"],
    }
    return json.dumps(page).encode()


@pytest.fixture
def json_index(cli: CliRunner, tmp_path: Path, recorded_index: RecordedIndex) -> tuple[Audit, dict[str, bytes]]:
    files = {path.name: path.read_bytes() for path in built(tmp_path / "dist")}
    body = pep691_page(recorded_index, files)
    recorded_index.routes["/simple/demo-pkg/"] = Route(200, "application/vnd.pypi.simple.v1+json", body)
    audit = Audit(cli, tmp_path, recorded_index.index_url)
    audit.record(tmp_path / "dist")
    return audit, files


def test_the_json_simple_api_is_asked_first_and_its_yanked_release_is_a_notice(
    json_index: tuple[Audit, dict[str, bytes]], cli: CliRunner, recorded_index: RecordedIndex
) -> None:
    audit, files = json_index
    code, out, _ = audit.run()
    # The yanked sdist still matches: exit 0, one informational notice, and no other alert.
    assert code == 0
    name = f"pypi:{recorded_index.index_url}/demo-pkg/{SDIST}"
    assert out.startswith(f"YANKED: {name} (1 of 2 tags)\n- {name} [new]: yanked; ")
    assert out.count("[new]") == 1
    assert "the index serves this recorded file yanked (PEP 592): broken metadata" in out
    assert audit.verdicts() == {WHEEL: Verdict.MATCH, SDIST: Verdict.MATCH}
    assert FileStateStore(audit.state).load_all()[(f"pypi:{recorded_index.index_url}/demo-pkg", SDIST)].yank_notified
    accept = [headers.get("Accept", "") for path, headers in recorded_index.requests if path == "/simple/demo-pkg/"]
    assert accept and all(a.startswith("application/vnd.pypi.simple.v1+json") for a in accept)
    assert audit.run()[:2] == (0, "")  # once, not every run

    result = cli("check", "--json", "pypi:demo-pkg==1.0", "--index-url", recorded_index.index_url)
    rows = {row["filename"]: row for row in json.loads(result.out)}
    assert rows[SDIST]["reason"] == "yanked (broken metadata)"
    assert rows[WHEEL]["upload_time"] == "2026-11-20T10:00:00.000000Z"

    body = pep691_page(recorded_index, files, yanked={})  # un-yanked
    recorded_index.routes["/simple/demo-pkg/"] = Route(200, "application/vnd.pypi.simple.v1+json", body)
    code, out, _ = audit.run()
    assert code == 0
    assert out.startswith(f"RESOLVED: {name} (1 of 2 tags)\n- {name} [resolved]: yanked; ")
    assert "yank resolved: the index serves the file un-yanked again (it was yanked: broken metadata)" in out
    assert audit.run()[:2] == (0, "")


def test_a_yank_reason_is_data_escaped_in_the_notice(
    json_index: tuple[Audit, dict[str, bytes]], recorded_index: RecordedIndex
) -> None:
    audit, files = json_index
    hostile = "see \x1b]8;;https://evil.example\x07here\x1b]8;;\x07\u202e\nBcc: everyone " + "x" * 5000
    body = pep691_page(recorded_index, files, yanked={WHEEL: hostile})
    recorded_index.routes["/simple/demo-pkg/"] = Route(200, "application/vnd.pypi.simple.v1+json", body)
    code, out, _ = audit.run()
    assert code == 0
    [notice] = [line for line in out.splitlines() if "[new]: yanked" in line]
    assert WHEEL in notice
    assert not any(char in out for char in "\x1b\x07\u202e")
    assert "see \\x1b]8;;https://evil.example\\x07here" in notice  # escaped once, where it is shown
    assert len(notice) < 1000  # the adapter bounds a reason to 200 characters


def test_a_drift_is_confirmed_by_the_served_bytes_and_a_lying_index_is_unverifiable(
    json_index: tuple[Audit, dict[str, bytes]], recorded_index: RecordedIndex
) -> None:
    audit, files = json_index
    swapped = {**files, WHEEL: b"PK not the wheel CI built"}
    # The index lists the recorded hash for the sdist but serves other bytes: it contradicts itself.
    lying = {SDIST: hashlib.sha256(files[SDIST]).hexdigest()}
    served = {**swapped, SDIST: b"other sdist bytes"}
    body = pep691_page(recorded_index, served, listed=lying)
    recorded_index.routes["/simple/demo-pkg/"] = Route(200, "application/vnd.pypi.simple.v1+json", body)

    code, out, _ = audit.run()
    assert code == 1
    assert audit.verdicts() == {WHEEL: Verdict.DRIFT, SDIST: Verdict.MATCH}
    assert "sha256:" + hashlib.sha256(swapped[WHEEL]).hexdigest() in out
    # Listed hash equal to the trusted one is taken as a match, like a registry's digest header; a listed hash
    # that differs is only believed when the served bytes agree with it.
    lying_other = {SDIST: "0" * 64}
    body = pep691_page(recorded_index, served, listed=lying_other)
    recorded_index.routes["/simple/demo-pkg/"] = Route(200, "application/vnd.pypi.simple.v1+json", body)
    audit.run()
    assert audit.verdicts()[SDIST] is Verdict.UNVERIFIABLE


def test_a_download_cut_short_is_unverifiable_and_the_run_goes_on(
    json_index: tuple[Audit, dict[str, bytes]], recorded_index: RecordedIndex
) -> None:
    audit, files = json_index
    body = pep691_page(recorded_index, {**files, WHEEL: b"other bytes"})
    recorded_index.routes["/simple/demo-pkg/"] = Route(200, "application/vnd.pypi.simple.v1+json", body)
    recorded_index.routes[f"/files/{WHEEL}"] = Route(200, "application/octet-stream", b"other", declared_length=10_000)
    code, _, err = audit.run()
    assert code == 3
    assert audit.verdicts() == {WHEEL: Verdict.UNVERIFIABLE, SDIST: Verdict.MATCH}
    assert "RemoteProtocolError while reading" in err


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (Route(503, "text/html", b"<h1>Service Unavailable</h1>"), "HTTP 503"),
        (
            Route(200, "text/html", b'<html><title>Sign in</title><form><input type="password"></form></html>'),
            "a login page?",
        ),
        (Route(302, "text/html", b"", {"Location": "/login?next=/simple/demo-pkg/"}), "a login page?"),
        (Route(200, "text/plain", b"demo_pkg-1.0.tar.gz"), "answered text/plain"),
    ],
    ids=["5xx", "login-form", "redirect-to-login", "unknown-media-type"],
)
def test_an_index_that_does_not_serve_a_simple_page_makes_files_unverifiable_never_missing(
    json_index: tuple[Audit, dict[str, bytes]], recorded_index: RecordedIndex, route: Route, reason: str
) -> None:
    audit, _ = json_index
    recorded_index.routes["/simple/demo-pkg/"] = route
    code, out, err = audit.run()
    assert code == 3
    assert set(audit.verdicts().values()) == {Verdict.UNVERIFIABLE}
    assert reason in out and reason in err


def test_a_huge_simple_page_is_bounded(
    json_index: tuple[Audit, dict[str, bytes]], recorded_index: RecordedIndex
) -> None:
    audit, _ = json_index
    anchors = [f'<a href="/files/demo_pkg-1.0-{n}-py3-none-any.whl#sha256={"a" * 64}">x</a>' for n in range(1, 25_001)]
    # The recorded files come after the bound: they must not be called missing, nor the rest match.
    anchors.append(f'<a href="/files/{WHEEL}">{WHEEL}</a>')
    body = ("<html><title>Links for demo-pkg</title><body>" + "\n".join(anchors) + "</body></html>").encode()
    recorded_index.routes["/simple/demo-pkg/"] = Route(200, "text/html", body)

    code, _, err = audit.run()
    assert code == 3
    verdicts = audit.verdicts()
    assert (verdicts[WHEEL], verdicts[SDIST]) == (Verdict.UNVERIFIABLE, Verdict.UNVERIFIABLE)
    assert list(verdicts.values()).count(Verdict.UNTRACKED) == 100  # reported per project, the rest counted
    assert "more files than are read (20000)" in err


def test_index_credentials_from_netrc_never_go_to_a_file_host_elsewhere(
    cli: CliRunner, tmp_path: Path, recorded_index: RecordedIndex
) -> None:
    files_host = RecordedIndex()
    files_host.start()
    try:
        files_host.routes[f"/files/{WHEEL}"] = Route(200, "application/octet-stream", b"wheel bytes")
        entry = {"filename": WHEEL, "url": f"http://{files_host.host}/files/{WHEEL}", "hashes": {}}
        page = {"meta": {"api-version": "1.0"}, "name": "demo-pkg", "files": [entry]}
        recorded_index.routes["/simple/demo-pkg/"] = Route(
            200, "application/vnd.pypi.simple.v1+json", json.dumps(page).encode()
        )
        recorded_index.authorization = "Basic cmVhZGVyOnMzY3JldA=="  # reader:s3cret
        netrc = tmp_path / "home" / ".netrc"
        netrc.write_text("machine 127.0.0.1 login reader password s3cret\n")
        netrc.chmod(0o600)

        result = cli("check", "--json", "pypi:demo-pkg==1.0", "--index-url", recorded_index.index_url)
        assert result.code == 0, result.err
        [row] = json.loads(result.out)
        assert (row["status"], row["live_digest"]) == (
            "resolved",
            "sha256:" + hashlib.sha256(b"wheel bytes").hexdigest(),
        )
        assert row["reason"] == "hashed from the served bytes"  # the index listed no hash
        assert all(headers.get("Authorization") for _, headers in recorded_index.requests)
        assert files_host.requests and not any("Authorization" in headers for _, headers in files_host.requests)
    finally:
        files_host.stop()


# --------------------------------------------------------------------------------------------------- devpi


def test_devpi_serves_the_json_api_and_a_volatile_overwrite_is_drift(
    cli: CliRunner, tmp_path: Path, devpi_server: DevpiServer
) -> None:
    name = f"dev{secrets.token_hex(3)}"
    index_url = devpi_server.new_index(name)
    files = built(tmp_path / "dist")
    devpi_server.upload(name, *files)
    audit = Audit(cli, tmp_path, index_url)
    audit.record(tmp_path / "dist")

    code, out, err = audit.run()
    assert (code, out) == (0, ""), err
    assert audit.verdicts() == {WHEEL: Verdict.MATCH, SDIST: Verdict.MATCH}

    [evil, _] = built(tmp_path / "evil", content="stolen token")
    devpi_server.upload(name, evil)  # a volatile index takes the same filename again
    code, out, _ = audit.run()
    assert code == 1
    assert f"live {sha256(evil)}; trusted {sha256(files[0])}" in out

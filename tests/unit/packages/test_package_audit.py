"""Package files in the one audit engine: planned and judged purely, then decided, published and saved with images."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit import alerts, drift
from audit.adapters.file_store import FileStateStore
from audit.cli.packages import dist_files
from audit.errors import PackageIndexError, ProjectNotFoundError, UsageError
from audit.models import ImageRef, LiveStatus, Observation, Verdict
from audit.packages import IndexFile, PackageSpec, ProjectPage
from audit.records import TrustedImage, WatchSettings
from audit.verdicts import Judgement
from tests.support.package_world import (
    REGISTRY,
    SDIST,
    WHEEL,
    World,
    digest,
    released_world,
    served,
    trusted,
)
from tests.support.service_world import T0


@pytest.fixture
def world(tmp_path: Path) -> World:
    return released_world(tmp_path)


async def test_packages_are_audited_beside_images_in_one_decide_publish_save_flow(world: World) -> None:
    image = TrustedImage(
        registry="registry.example.com", repository="org/app", tag="1.0", digest=digest("image"),
        source="https://ci.example/runs/2", recorded_at=T0,
    )  # fmt: skip
    world.trust.record(image)
    world.registry.served[("registry.example.com/org/app", "1.0")] = digest("image")
    world.index.serve(WHEEL, "stolen")

    code, verdicts = await world.run()
    assert (code, verdicts) == (1, {"1.0": Verdict.MATCH, WHEEL: Verdict.DRIFT, SDIST: Verdict.MATCH})
    assert [ref.image for ref, _ in world.registry.observed] == ["registry.example.com/org/app"]  # never pypi:
    [finding] = world.alerts.last
    assert (finding.trusted_digest, finding.live_digest) == (digest("wheel"), digest("stolen"))
    assert world.index.downloads == [WHEEL, WHEEL]  # confirmed by the bytes, and again after the delay
    assert world.sleeps == [5.0]
    saved = FileStateStore(world.state.path).load_all()
    assert saved[(f"{REGISTRY}/demo-pkg", WHEEL)].alerted_verdict is Verdict.DRIFT

    assert (await world.run())[0] == 1
    assert len(world.alerts.runs) == 1  # the same drift is not alerted again


async def test_a_file_recorded_while_the_auditor_waits_is_not_reported(world: World) -> None:
    world.index.serve(WHEEL, "rebuilt")
    world.during_sleep = [trusted(WHEEL, "rebuilt").model_copy(update={"reason": "re-release"})]
    code, verdicts = await world.run()
    assert (code, verdicts[WHEEL]) == (0, Verdict.MATCH)
    assert world.alerts.runs == []


async def test_state_is_saved_only_after_the_alerts_went_out(world: World) -> None:
    world.index.files = [f for f in world.index.files if f.filename != SDIST]
    world.alerts.fail = True
    with pytest.raises(Exception, match="cannot publish"):
        await world.run()
    # The missing file's alert was not delivered: its state is not saved, so the next run alerts it again.
    assert (f"{REGISTRY}/demo-pkg", SDIST) not in FileStateStore(world.state.path).load_all()
    world.alerts.fail = False
    code, _ = await world.run()
    assert code == 1
    assert [(f.tag, f.alert_verdict) for f in world.alerts.last] == [(SDIST, "missing")]


async def test_an_unreadable_index_is_unverifiable_and_keeps_untracked_alerts_open(world: World) -> None:
    world.trust.put_watch_settings(WatchSettings(registry=REGISTRY, repository="demo-pkg", track_new_tags=True))
    world.index.serve("demo_pkg-1.1.tar.gz", "new")
    code, verdicts = await world.run()
    assert (code, verdicts["demo_pkg-1.1.tar.gz"]) == (0, Verdict.UNTRACKED)

    world.index.error = PackageIndexError("the simple page of demo-pkg: HTTP 503")
    code, verdicts = await world.run()
    assert code == 3
    assert (verdicts[WHEEL], verdicts[SDIST]) == (Verdict.UNVERIFIABLE, Verdict.UNVERIFIABLE)
    # The whole index failed: alerted at once; the untracked alert is not "resolved" by a run that saw nothing.
    statuses = {(f.tag, f.alert_verdict) for f in world.alerts.last}
    assert statuses == {(WHEEL, "unverifiable"), (SDIST, "unverifiable")}

    world.index.error = None
    world.index.files = [f for f in world.index.files if f.filename != "demo_pkg-1.1.tar.gz"]
    await world.run()
    assert ("demo_pkg-1.1.tar.gz", "resolved") in {(f.tag, f.alert_verdict) for f in world.alerts.last}


async def test_a_project_the_index_no_longer_has_is_missing(world: World) -> None:
    world.index.error = ProjectNotFoundError("the simple page of demo-pkg: HTTP 404")
    code, verdicts = await world.run()
    assert (code, set(verdicts.values())) == (1, {Verdict.MISSING})


async def test_a_repository_filter_leaves_packages_out_unless_named(world: World) -> None:
    world.index.serve(WHEEL, "stolen")
    code, verdicts = await world.run(repositories=frozenset({"registry.example.com/org/app"}))
    assert (code, verdicts) == (0, {})
    code, verdicts = await world.run(repositories=frozenset({f"{REGISTRY}/demo-pkg"}))
    assert verdicts[WHEEL] is Verdict.DRIFT


# --------------------------------------------------------------------------------------------------- pure parts


def page(*files: IndexFile, truncated: bool = False) -> ProjectPage:
    return ProjectPage(project="demo-pkg", files=files, truncated=truncated)


def test_plan_pairs_recorded_files_and_picks_unrecorded_ones() -> None:
    recorded = [trusted(WHEEL, "wheel")]
    listed = page(
        served(WHEEL, "wheel"),
        served("demo_pkg-1.0-cp313-cp313-win_amd64.whl", "extra"),
        served("demo_pkg-2.0.tar.gz", "new"),
    )
    checks, left_out = drift.plan_package_checks(REGISTRY, "demo-pkg", recorded, listed, track_new_releases=False)
    assert [(c.ref.tag, c.untracked_reason) for c in checks] == [
        (WHEEL, None),
        ("demo_pkg-1.0-cp313-cp313-win_amd64.whl", "a file in recorded release 1.0 that CI did not record"),
    ]
    checks, _ = drift.plan_package_checks(REGISTRY, "demo-pkg", recorded, listed, track_new_releases=True)
    assert checks[-1].untracked_reason == "release 2.0 was never recorded"
    many = page(*(served(f"demo_pkg-1.0-{n}-py3-none-any.whl", str(n)) for n in range(1, 8)))
    checks, left_out = drift.plan_package_checks(
        REGISTRY, "demo-pkg", recorded, many, track_new_releases=False, max_untracked=3
    )
    assert (len(checks), left_out) == (4, 4)


def test_invalid_names_are_reported_under_hashed_keys() -> None:
    listed = ProjectPage(project="demo-pkg", files=(), invalid=("evil\\x1b.whl",))
    [check], _ = drift.plan_package_checks(REGISTRY, "demo-pkg", [], listed, track_new_releases=False)
    assert check.ref.tag is not None and check.ref.tag.startswith("invalid-filename-")
    assert "evil\\x1b.whl" in (check.untracked_reason or "")


def test_a_recorded_file_absent_from_a_truncated_page_is_unverifiable_and_yanks_are_noted() -> None:
    record = trusted(WHEEL, "wheel")
    ref = record.ref
    gone = Observation(ref=ref, status=LiveStatus.MISSING, reason="not listed")
    check = drift.PackageCheck(ref, record, None)
    assert drift.package_verdict(check, gone, truncated=True).verdict is Verdict.UNVERIFIABLE
    assert drift.package_verdict(check, gone).verdict is Verdict.MISSING
    yanked = drift.PackageCheck(ref, record, served(WHEEL, "wheel", yanked="broken"))
    found = Observation(ref=ref, status=LiveStatus.FOUND, live_digest=digest("wheel"))
    assert drift.package_verdict(yanked, found) == Judgement(Verdict.MATCH, "release yanked (broken)")


def test_package_alerts_tell_a_responder_what_to_run_with_quoted_words() -> None:
    record = trusted(WHEEL, "wheel")
    state_ref = ImageRef(registry=REGISTRY, repository="demo-pkg", tag=WHEEL)
    observation = Observation(ref=state_ref, status=LiveStatus.FOUND, live_digest=digest("stolen"))
    decision = drift.decide(None, Verdict.DRIFT, digest("stolen"), ref=state_ref, now=T0)
    assert decision.notice is not None
    finding = drift.finding_for(record, observation, Verdict.DRIFT, "serves x", decision.new_state, decision.notice)
    [message] = alerts.render("run1", [finding], total_tags=2)
    email = message.protocol("email")
    assert (
        "pip download --no-deps --index-url https://pypi.example.com/simple --dest digest-audit-check "
        "demo-pkg==1.0" in email
    )
    assert f"sha256sum digest-audit-check/{WHEEL}" in email
    assert "trusted publishing" in email and "Rotate the index upload token" in email
    assert "crane" not in email
    assert message.attributes["registry"] == REGISTRY
    epoch = finding.model_copy(update={"tag": "demo_pkg-1!2.0-py3-none-any.whl"})
    assert alerts.confirm_commands(epoch) == [
        "pip download --no-deps --index-url https://pypi.example.com/simple --dest digest-audit-check "
        "'demo-pkg==1!2.0'",
        "sha256sum digest-audit-check/'demo_pkg-1!2.0-py3-none-any.whl'",
    ]


def test_an_unrecorded_file_whose_name_is_no_valid_tag_is_keyed_by_its_hash() -> None:
    long_name = "demo_pkg-1.0-py3-none-" + "manylinux_2_17_x86_64." * 6 + "any.whl"
    listed = page(served(long_name, "extra"))
    [_, check], _ = drift.plan_package_checks(
        REGISTRY, "demo-pkg", [trusted(SDIST, "sdist")], listed, track_new_releases=False
    )
    assert check.ref.tag is not None and check.ref.tag.startswith("#")
    assert check.served is not None and check.served.filename == long_name


def test_record_refuses_a_filename_the_trust_keys_cannot_hold(tmp_path: Path) -> None:
    (tmp_path / "demo_pkg-1.0+local-py3-none-any.whl").write_bytes(b"x")
    with pytest.raises(UsageError, match="cannot record"):
        dist_files(tmp_path, PackageSpec("demo-pkg", "1.0+local"))

"""CI log parsing: each pushing tool's real output format, with GitHub and GitLab prefixes, and what is refused."""

from __future__ import annotations

import pytest

from audit.ci_logs import JobEvidence, analyse_job, log_lines
from tests.support import ci_log_samples as samples
from tests.support.ci_log_samples import digest, github, gitlab


def pushed(evidence: JobEvidence) -> dict[str, str]:
    return {f"{item.ref.image}:{item.ref.tag}": str(item.ref.digest) for item in evidence.pushed if item.ref.digest}


def one_step(text: str, step: str | None = "Build and push") -> JobEvidence:
    return analyse_job("build", [(step, text)])


@pytest.mark.parametrize("wrap", [github, gitlab], ids=["github", "gitlab"])
@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (samples.DOCKER_PUSH, {"registry-1.docker.io/openzaak/open-zaak:1.3.4": digest("a")}),
        (samples.BUILDKIT_PUSH, {"ghcr.io/org/app:2.0": digest("b"), "ghcr.io/org/app:latest": digest("b")}),
        (samples.BUILD_PUSH_ACTION, {"ghcr.io/org/app:3.1": digest("c"), "ghcr.io/org/app:stable": digest("c")}),
        (samples.CRANE_COPY, {"registry.example.com/mirror/app:4.0": digest("d")}),
        (samples.CRANE_PUSH, {"registry.example.com/team/tool:0.9": digest("0")}),
        (samples.SKOPEO_COPY, {"quay.io/org/cli:5.2": digest("5")}),
        (samples.DOCKER_PULL, {}),
        (samples.BUILDKIT_LOAD, {}),
    ],
    ids=["docker-push", "buildkit", "build-push-action", "crane-copy", "crane-push", "skopeo", "pull", "load"],
)
def test_each_tool_format_ties_the_pushed_digest_to_its_tags(
    sample: str, expected: dict[str, str], wrap: object
) -> None:
    assert callable(wrap)
    evidence = one_step(wrap(sample))

    assert pushed(evidence) == expected
    assert evidence.unresolved == []


def test_evidence_names_job_step_and_line() -> None:
    evidence = one_step(github(samples.DOCKER_PUSH))

    (item,) = evidence.pushed
    assert item.describe() == "job 'build', step 'Build and push', line 9: docker push"
    assert item.first.logged_at is not None and item.first.logged_at.isoformat() == "2021-04-01T10:00:00.123456+00:00"


def test_build_push_action_digest_output_corroborates_the_metadata() -> None:
    (first, _) = one_step(github(samples.BUILD_PUSH_ACTION)).pushed
    assert [sighting.kind for sighting in first.evidence] == [
        "buildkit pushing manifest",
        "build-push-action metadata",
        "build-push-action digest",
    ]


def test_single_file_github_log_splits_steps_at_their_run_groups() -> None:
    text = github(samples.DOCKER_PUSH + samples.BUILD_PUSH_ACTION)
    evidence = analyse_job("release", [(None, text)])

    steps = {f"{item.ref.repository}:{item.ref.tag}": item.first.where.step for item in evidence.pushed}
    assert steps == {
        "openzaak/open-zaak:1.3.4": "docker push openzaak/open-zaak:1.3.4",
        "org/app:3.1": "docker/build-push-action@v5",
        "org/app:stable": "docker/build-push-action@v5",
    }


def test_gitlab_sections_ansi_and_continuations_are_read_as_shown() -> None:
    trace = (
        "2024-05-14T11:19:20.000000Z 00O section_start:1715685560:step_script\r\x1b[0K"
        '\x1b[0K\x1b[36;1mExecuting "step_script" stage of the job script\x1b[0;m\n'
        "2024-05-14T11:19:21.000000Z 00O \x1b[32;1m$ docker push registry.gitlab.com/team/app:7.0\x1b[0;m\n"
        "2024-05-14T11:19:22.000000Z 00O The push refers to repository [registry.gitlab.com/team/app]\n"
        f"2024-05-14T11:19:23.000000Z 00O 7.0: digest: {digest('a')[:30]}\n"
        f"2024-05-14T11:19:23.000000Z 00O+{digest('a')[30:]} size: 1570\n"
        "2024-05-14T11:19:24.000000Z 00O section_end:1715685564:step_script\r\x1b[0K\n"
    )
    evidence = analyse_job("release-image", [(None, trace)])

    assert pushed(evidence) == {"registry.gitlab.com/team/app:7.0": digest("a")}
    assert evidence.pushed[0].first.where.step == "step_script"


def test_one_tag_with_two_digests_in_a_job_is_ambiguous_not_guessed() -> None:
    second = samples.DOCKER_PUSH.replace(digest("a"), digest("b"))
    evidence = analyse_job("build", [("first", github(samples.DOCKER_PUSH)), ("second", github(second))])

    assert evidence.pushed == []
    (problem,) = evidence.unresolved
    assert (problem.reference, [str(d) for d in problem.digests]) == (
        "openzaak/open-zaak:1.3.4",
        [digest("a"), digest("b")],
    )
    assert "2 different digests" in problem.reason


def test_docker_push_digest_without_its_repository_line_is_ambiguous() -> None:
    evidence = one_step(github(f"1.0: digest: {digest('a')} size: 528"))

    assert evidence.pushed == []
    assert [problem.reason for problem in evidence.unresolved] == [
        "tag pushed with no `The push refers to repository` line before it"
    ]


def test_buildkit_vertex_with_two_manifest_lists_is_ambiguous() -> None:
    log = f"""
#5 exporting manifest list {digest("1")} done
#5 exporting manifest list {digest("2")} done
#5 naming to ghcr.io/org/app:9 done
#5 pushing layers done
"""
    evidence = one_step(github(log))

    assert evidence.pushed == []
    (problem,) = evidence.unresolved
    assert [str(d) for d in problem.digests] == [digest("1"), digest("2")]


def test_a_digest_with_no_tag_is_reported() -> None:
    evidence = one_step(github(f"##[group]Digest\n{digest('c')}\n##[endgroup]"))

    assert evidence.pushed == []
    assert [(p.reference, p.reason) for p in evidence.unresolved] == [
        ("(no tag)", "build-push-action digest names no tag")
    ]


@pytest.mark.parametrize(
    "line",
    [
        f"The push refers to repository [docker.io/Evil/<script>]\n1.0: digest: {digest('a')} size: 1",
        f"#3 naming to ghcr.io/org/app:$(rm -rf /) done\n#3 exporting manifest {digest('a')}\n#3 pushing layers",
        f"#3 pushing manifest for ghcr.io/org/app:{'x' * 200}@{digest('a')}",
        f"ghcr.io/org/app:1.0\x07\x00: digest: {digest('a')} size: 3",
    ],
    ids=["bad-repository", "shell-in-name", "long-tag", "control-characters"],
)
def test_references_that_fail_the_grammar_are_refused_and_escaped(line: str) -> None:
    evidence = one_step(github(line))

    assert evidence.pushed == []
    for problem in evidence.unresolved:
        assert "\x1b" not in problem.reference and "\x07" not in problem.reference


def test_malformed_digests_and_huge_lines_are_ignored() -> None:
    log = "The push refers to repository [docker.io/org/app]\n"
    log += "1.0: digest: sha256:" + "A" * 64 + " size: 1\n"  # uppercase hex: not a digest
    log += "2.0: digest: sha256:" + "a" * 63 + " size: 1\n"
    log += "x" * 100_000 + f": digest: {digest('a')} size: 1\n"
    evidence = one_step(github(log))

    assert evidence.pushed == [] and evidence.unresolved == []


def test_log_lines_strip_prefixes_and_keep_line_numbers() -> None:
    lines = log_lines("\ufeff2021-04-01T10:00:00.1234567Z hello\n2021/04/01 10:00:00 crane says\r\nplain")
    assert [(line.number, line.text) for line in lines] == [(1, "hello"), (2, "crane says"), (3, "plain")]

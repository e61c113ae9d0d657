"""`check pypi:`: one row per file the index serves, hashed when the index gives no sha256; nothing is trusted."""

from __future__ import annotations

from audit.app.package_check import check_rows
from audit.errors import PackageIndexError, ProjectNotFoundError
from audit.models import Digest, Verdict
from audit.packages import IndexFile, PackageSpec, ProjectPage, parse_filename
from tests.support.store_builders import digest

INDEX = "https://pypi.example.com/simple"
WHEEL = parse_filename("demo_pkg-1.0-py3-none-any.whl")
SDIST = parse_filename("demo_pkg-1.0.tar.gz")


class Index:
    def __init__(self, page: ProjectPage | Exception, hashes: dict[str, Digest | Exception]) -> None:
        self.page = page
        self.hashes = hashes

    async def project_page(self, index_url: str, project: str) -> ProjectPage:
        if isinstance(self.page, Exception):
            raise self.page
        return self.page

    async def file_digest(self, index_url: str, file: IndexFile) -> Digest:
        found = self.hashes[file.filename]
        if isinstance(found, Exception):
            raise found
        return found


async def test_each_file_is_resolved_by_the_listed_hash_or_by_hashing_the_bytes() -> None:
    assert WHEEL is not None and SDIST is not None
    page = ProjectPage("demo-pkg", (IndexFile(WHEEL, "w", digest("a"), yanked=""), IndexFile(SDIST, "s", None)))
    rows = await check_rows(
        Index(page, {SDIST.filename: digest("b")}), INDEX, "pypi:demo-pkg==1.0", PackageSpec("demo-pkg", "1.0")
    )
    assert [(r["filename"], r["status"], r["live_digest"], r["reason"]) for r in rows] == [
        (WHEEL.filename, Verdict.RESOLVED.value, str(digest("a")), "yanked (no reason given)"),
        (SDIST.filename, Verdict.RESOLVED.value, str(digest("b")), "hashed from the served bytes"),
    ]


async def test_a_file_that_cannot_be_hashed_is_unverifiable_and_the_others_still_resolve() -> None:
    assert WHEEL is not None and SDIST is not None
    page = ProjectPage("demo-pkg", (IndexFile(WHEEL, "w", None), IndexFile(SDIST, "s", digest("c"))))
    index = Index(page, {WHEEL.filename: PackageIndexError("http 503 from the index")})
    rows = await check_rows(index, INDEX, "pypi:demo-pkg==1.0", PackageSpec("demo-pkg", "1.0"))
    assert [(r["status"], r["reason"]) for r in rows] == [
        (Verdict.UNVERIFIABLE.value, "http 503 from the index"),
        (Verdict.RESOLVED.value, None),
    ]


async def test_an_unknown_project_is_missing_and_a_truncated_page_without_the_release_unverifiable() -> None:
    spec = PackageSpec("demo-pkg", "2.0")
    missing = await check_rows(Index(ProjectNotFoundError("no such project"), {}), INDEX, "pypi:demo-pkg==2.0", spec)
    assert [(r["status"], r["reason"]) for r in missing] == [(Verdict.MISSING.value, "no such project")]
    truncated = ProjectPage("demo-pkg", (), truncated=True)
    rows = await check_rows(Index(truncated, {}), INDEX, "pypi:demo-pkg==2.0", spec)
    assert rows[0]["status"] == Verdict.UNVERIFIABLE.value
    assert rows[0]["reason"].endswith("among the files read (the page is truncated)")

"""`check pypi:PROJECT==VERSION`: what a package index serves for a release now, one row per file.

Nothing is trusted here: each file the index lists is `resolved` with its sha256 (hashed from the served bytes
when the index gives none); a project or release the index does not have is `missing`, an unreadable page
`unverifiable`.
"""

from __future__ import annotations

from typing import Any

from audit.errors import AuditError, ProjectNotFoundError
from audit.models import Digest, Verdict, iso_utc, utcnow
from audit.packages import IndexFile, PackageSpec, normalise_version, registry_key
from audit.ports import PackageIndex


async def check_rows(index: PackageIndex, index_url: str, typed: str, spec: PackageSpec) -> list[dict[str, Any]]:
    """One row per file the index serves for the release (`resolved`), or one `missing`/`unverifiable` row."""
    registry = registry_key(index_url)

    def row(
        status: Verdict, *, file: IndexFile | None = None, live: Digest | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        return {
            "reference": typed,
            "registry": registry,
            "repository": spec.project,
            "tag": file.filename if file else None,
            "filename": file.filename if file else None,
            "version": file.name.version if file else spec.version,
            "trusted_digest": None,
            "live_digest": str(live) if live else None,
            "status": status.value,
            "reason": reason,
            "checked_at": iso_utc(utcnow()),
            "yanked": file.yanked if file else None,
            "upload_time": file.upload_time if file else None,
            "size": file.size if file else None,
        }

    try:
        page = await index.project_page(index_url, spec.project)
    except ProjectNotFoundError as exc:
        return [row(Verdict.MISSING, reason=exc.message)]
    except AuditError as exc:
        return [row(Verdict.UNVERIFIABLE, reason=exc.message)]
    wanted = normalise_version(spec.version) if spec.version else None
    files = [f for f in page.files if f.name.project == spec.project and (wanted is None or f.name.release == wanted)]
    if not files:
        reason = f"the index lists no file of {spec.project}=={spec.version}"
        if page.truncated:
            return [row(Verdict.UNVERIFIABLE, reason=f"{reason} among the files read (the page is truncated)")]
        return [row(Verdict.MISSING, reason=reason)]
    rows = []
    for file in files:
        yanked = f"yanked ({file.yanked or 'no reason given'})" if file.yanked is not None else None
        if file.sha256 is not None:
            rows.append(row(Verdict.RESOLVED, file=file, live=file.sha256, reason=yanked))
            continue
        try:  # the index gave no sha256: hash the bytes it serves
            hashed = await index.file_digest(index_url, file)
        except AuditError as exc:
            rows.append(row(Verdict.UNVERIFIABLE, file=file, reason=exc.message))
            continue
        rows.append(row(Verdict.RESOLVED, file=file, live=hashed, reason=yanked or "hashed from the served bytes"))
    return rows

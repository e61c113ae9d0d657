"""The push-event audit: one targeted audit of the tags a batch of push events names, shared by the Lambda's
queue consumer and `digest-audit listen`, with the scheduled run's engine, state and dedup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from audit import hooks
from audit.app.audit import AuditService, RunOptions, RunReport
from audit.hooks import CheckRequest
from audit.ports import TrustReader


class PushAudit:
    """An event is only a hint to check a tag now; the verdict comes from the registry and the trust store."""

    def __init__(self, trust: TrustReader, auditor: Callable[[], AuditService]) -> None:
        self._trust = trust
        self._auditor = auditor

    async def tags(self, requests: Sequence[CheckRequest]) -> frozenset[tuple[str, str]]:
        """The (image, tag) pairs to check; a delete by digest reads the trust store (in a thread: the loop may
        be serving webhooks meanwhile)."""
        return await asyncio.to_thread(hooks.tags_to_check, requests, self._trust.load_all)

    async def run(self, requests: Sequence[CheckRequest]) -> RunReport | None:
        """The targeted audit's report; None when the batch names nothing recorded to check."""
        tags = await self.tags(requests)
        if not tags:
            return None
        return await self._auditor().run(RunOptions(tags=tags))

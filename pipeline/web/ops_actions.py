"""The ops API's actions: replay and purge dead letters, pause and resume sending. Admin role only.

Replay is ``dlq replay``'s (``pipeline.ops.dlq.replay``), with its rules: one
transaction per dead letter, at most once, an item not failed any more sends
nothing, and one that may deliver its email twice (its last attempt may have reached
a provider past its idempotency window: Resend 24 h, SMTP none) is refused with
status ``duplicate_risk`` unless ``accept_duplicate_risk`` is true.
A selection is ``{"ids": [...]}`` or ``{"filter": {...}}`` (``dlq list``'s filters and search ``q``), not both;
a filter replays those not replayed yet, as ``dlq replay --all`` does. ``dry_run``
reports and changes nothing. Every action is written to the audit log with the
role, the selection and the counts.
"""

# No ``from __future__ import annotations``: FastAPI reads these routes' annotations at run time,
# and they name dependencies built in ``router``'s scope.

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from pipeline.core.runtime import Runtime
from pipeline.ops import dlq
from pipeline.web.auth import ApiError, OpsAuth, Principal, audit
from pipeline.web.ops_api import OPS_PREFIX, REFUSALS, fits_bigint, parse_since
from pipeline.web.schemas import ByIds, ErrorBody, PauseRequest, PurgeBody, ReplayBody, ResumeRequest, Selection
from storage import dead_letters
from storage.dead_letters import LetterFilter


def router(current: Runtime, auth: OpsAuth) -> APIRouter:
    routes = APIRouter(prefix=OPS_PREFIX, tags=["ops actions"], responses=REFUSALS)
    Admin = Annotated[Principal, Depends(auth.admin)]

    @routes.post("/dead-letters/replay", response_model=ReplayBody)
    def replay(principal: Admin, selection: Selection) -> Any:
        """Send dead letters again with a fresh retry budget, their items back in play (``dlq replay``)."""
        ids = _selected(current, selection, replaying=True)
        outcomes = [
            dlq.replay(
                current.broker,
                current.sessions,
                i,
                dry_run=selection.dry_run,
                accept_duplicate_risk=selection.accept_duplicate_risk,
            )
            for i in ids
        ]
        sent = {dlq.ReplayStatus.REPLAYED, dlq.ReplayStatus.WOULD_REPLAY}
        replayed = [outcome.dead_letter_id for outcome in outcomes if outcome.status in sent]
        audit(
            principal,
            "replay",
            selection=_shown(selection),
            matched=len(ids),
            replayed=len(replayed),
            accept_duplicate_risk=selection.accept_duplicate_risk,
        )
        return {
            "matched": len(ids),
            "replayed": len(replayed),
            "dry_run": selection.dry_run,
            "ids": replayed,
            "outcomes": [outcome.as_json() for outcome in outcomes],
        }

    @routes.post("/dead-letters/purge", response_model=PurgeBody)
    def purge(principal: Admin, selection: Selection) -> Any:
        """Delete dead letters for good: some by id, or all matching a filter."""
        ids = _selected(current, selection, replaying=False)
        with current.sessions() as session:
            existing = dead_letters.count_ids(session, ids)
        deleted = 0 if selection.dry_run else dead_letters.purge_ids(current.sessions, ids)
        audit(principal, "purge", selection=_shown(selection), matched=existing, deleted=deleted)
        return {"matched": existing, "deleted": deleted, "dry_run": selection.dry_run}

    @routes.delete("/dead-letters/{letter_id:rowid}", response_model=PurgeBody, responses={404: {"model": ErrorBody}})
    def delete_one(principal: Admin, letter_id: int) -> Any:
        """Delete one dead letter."""
        deleted = dead_letters.purge_ids(current.sessions, [letter_id]) if fits_bigint(letter_id) else 0
        audit(principal, "purge", ids=[letter_id], deleted=deleted)
        if not deleted:
            raise ApiError(404, f"no dead letter {letter_id}")
        return {"matched": 1, "deleted": 1, "dry_run": False}

    @routes.post("/sending/pause", response_model=dict[str, Any])
    def pause(principal: Admin, request: PauseRequest) -> Any:
        """Pause all sending, or bulk only, for ``minutes`` or until resumed; answers the sending state."""
        current.sending.pause(request.scope, minutes=request.minutes, reason=request.reason, by=principal.role.value)
        audit(principal, "pause", scope=request.scope, minutes=request.minutes, reason=request.reason)
        return current.sending.state()

    @routes.post("/sending/resume", response_model=dict[str, Any])
    def resume(principal: Admin, request: ResumeRequest) -> Any:
        """End an operator's pause (all, or bulk); answers the sending state."""
        ended = current.sending.resume(request.scope)
        audit(principal, "resume", scope=request.scope, ended=ended)
        return current.sending.state()

    return routes


def _selected(current: Runtime, selection: Selection, *, replaying: bool) -> list[int]:
    """The ids a selection names: its ``ids`` as given, or those its ``filter`` matches."""
    if isinstance(selection, ByIds):
        return sorted({i for i in selection.ids if fits_bigint(i)})
    given = selection.filter
    chosen = LetterFilter(
        queue=given.queue,
        actor=given.actor,
        since=parse_since(given.since),
        unreplayed=given.unreplayed or replaying,
        q=given.q,
        items=dlq.ITEM_ACTORS,
    )
    with current.sessions() as session:
        return dead_letters.matching_ids(session, chosen)


def _shown(selection: Selection) -> dict[str, Any]:
    """The selection as the audit line shows it."""
    return selection.model_dump(mode="json", exclude={"dry_run", "accept_duplicate_risk"})

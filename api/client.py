"""api: `NudgeClient`, a small async HTTP client of the Nudge API (used by the CLI and `nudge dev`)."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx

StatusAction = Literal["activate", "pause", "archive"]


class NudgeClientError(Exception):
    """The API refused a call; the message carries its status and what it said."""

    def __init__(self, status_code: int, detail: Any):
        self.status_code = status_code
        self.detail = detail
        if isinstance(detail, dict) and "problems" in detail:
            text = "\n  " + "\n  ".join(str(p) for p in detail["problems"])
        else:
            text = str(detail)
        super().__init__(f"{status_code}: {text}")


def _segment(value: str) -> str:
    return quote(value, safe="")


class NudgeClient:
    """`async with NudgeClient(url, admin_token=..., write_key=...) as nudge: ...`"""

    def __init__(
        self,
        base_url: str,
        *,
        admin_token: str | None = None,
        write_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.admin_token = admin_token
        self.write_key = write_key
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> NudgeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    def _admin(self) -> dict[str, str]:
        if not self.admin_token:
            raise NudgeClientError(0, "this call needs the admin token (NUDGE_ADMIN_TOKEN)")
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NudgeClientError(0, f"cannot reach {self._http.base_url}: {exc}") from exc
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise NudgeClientError(response.status_code, detail)
        return response.json()

    # -- campaigns --------------------------------------------------------------------------

    async def apply_campaign(self, definition: str, *, activate: bool = False) -> dict[str, Any]:
        """Save a definition (YAML or JSON text): a new version when it changed. Returns the
        campaign, with `new_version` (whether a version was written), `version` (the saved
        one) and `version_state` (`live`, or `draft` until published). `activate` publishes
        the saved version and activates the campaign in the same request."""
        is_json = definition.lstrip().startswith("{")
        saved = await self._call(
            "POST",
            "/v1/campaigns",
            params={"activate": "true"} if activate else None,
            content=definition.encode(),
            headers={
                **self._admin(),
                "Content-Type": "application/json" if is_json else "application/yaml",
            },
        )
        campaign: dict[str, Any] = saved["campaign"]
        return {
            **campaign,
            "new_version": saved["new_version"],
            "version": saved["version"]["version"],
            "version_state": saved["version"]["state"],
        }

    async def set_campaign_status(self, campaign_id: str, action: StatusAction) -> dict[str, Any]:
        if action not in ("activate", "pause", "archive"):
            raise ValueError(f"unknown action {action!r}: activate, pause or archive")
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/campaigns/{_segment(campaign_id)}/{action}", headers=self._admin()
        )
        return result

    async def list_campaigns(self, *, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        result = await self._call("GET", "/v1/campaigns", params=params, headers=self._admin())
        data: list[dict[str, Any]] = result["data"]
        return data

    async def get_campaign(self, campaign_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/campaigns/{_segment(campaign_id)}", headers=self._admin()
        )
        return result

    async def campaign_stats(self, campaign_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/campaigns/{_segment(campaign_id)}/stats", headers=self._admin()
        )
        return result

    # -- segments ---------------------------------------------------------------------------

    async def apply_segment(self, definition: str) -> dict[str, Any]:
        """Save a segment (YAML or JSON text): a new version when it changed. Returns the
        segment, with `new_version` saying whether a version was written."""
        is_json = definition.lstrip().startswith("{")
        saved = await self._call(
            "POST",
            "/v1/segments",
            content=definition.encode(),
            headers={
                **self._admin(),
                "Content-Type": "application/json" if is_json else "application/yaml",
            },
        )
        return {**saved["segment"], "new_version": saved["new_version"]}

    async def list_segments(self) -> list[dict[str, Any]]:
        result = await self._call("GET", "/v1/segments", headers=self._admin())
        data: list[dict[str, Any]] = result["data"]
        return data

    async def get_segment(self, segment_id: str) -> dict[str, Any]:
        """Definition, version, status (building or ready) and member count."""
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/segments/{_segment(segment_id)}", headers=self._admin()
        )
        return result

    async def segment_members(
        self, segment_id: str, *, after: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """One page of members (`data`, in user id order) and `next_after` for the next."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        result: dict[str, Any] = await self._call(
            "GET",
            f"/v1/segments/{_segment(segment_id)}/members",
            params=params,
            headers=self._admin(),
        )
        return result

    async def delete_segment(self, segment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "DELETE", f"/v1/segments/{_segment(segment_id)}", headers=self._admin()
        )
        return result

    async def sandbox_messages(
        self, *, user_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if user_id:
            params["user_id"] = user_id
        result = await self._call("GET", "/v1/messages", params=params, headers=self._admin())
        data: list[dict[str, Any]] = result["data"]
        return data

    async def rejected_events(
        self, *, limit: int = 50, before: int | None = None
    ) -> dict[str, Any]:
        """A page of messages ingestion refused, newest first (`next_before` pages on)."""
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        result: dict[str, Any] = await self._call(
            "GET", "/v1/rejected-events", params=params, headers=self._admin()
        )
        return result

    # -- events -----------------------------------------------------------------------------

    async def track(
        self,
        *,
        user_id: str,
        event: str,
        properties: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """Send one Segment `track` call; the answer comes once the event is stored."""
        if not self.write_key:
            raise NudgeClientError(0, "sending events needs the write key (NUDGE_WRITE_KEY)")
        body = {
            "userId": user_id,
            "event": event,
            "properties": properties or {},
            "messageId": message_id or f"cli-{uuid.uuid4()}",
        }
        result: dict[str, Any] = await self._call(
            "POST", "/v1/track", json=body, auth=(self.write_key, "")
        )
        return {**result, "messageId": body["messageId"]}

    # -- journeys ---------------------------------------------------------------------------

    async def journey_state(self, campaign_id: str, user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET",
            f"/v1/journeys/{_segment(campaign_id)}/{_segment(user_id)}",
            headers=self._admin(),
        )
        return result

    async def exit_journey(self, campaign_id: str, user_id: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST",
            f"/v1/journeys/{_segment(campaign_id)}/{_segment(user_id)}/exit",
            json={"reason": reason},
            headers=self._admin(),
        )
        return result

    # -- nudge dev: the first run's demo user -----------------------------------------------

    async def identify(
        self, *, user_id: str, traits: dict[str, Any], message_id: str | None = None
    ) -> dict[str, Any]:
        """Send one Segment `identify` call (a user's traits); answered once it is stored."""
        if not self.write_key:
            raise NudgeClientError(0, "identifying users needs the write key (NUDGE_WRITE_KEY)")
        body = {
            "userId": user_id,
            "traits": traits,
            "messageId": message_id or f"cli-{uuid.uuid4()}",
        }
        result: dict[str, Any] = await self._call(
            "POST", "/v1/identify", json=body, auth=(self.write_key, "")
        )
        return {**result, "messageId": body["messageId"]}

    # -- lifecycle: publish and compare campaign versions -----------------------------------

    async def publish_campaign(
        self, campaign_id: str, *, version: int | None = None
    ) -> dict[str, Any]:
        """Make a version (default: the latest) the one new journeys enter."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/v1/campaigns/{_segment(campaign_id)}/publish",
            params={"version": version} if version is not None else None,
            headers=self._admin(),
        )
        return result

    async def campaign_diff(
        self, campaign_id: str, *, from_version: int | None = None, to_version: int | None = None
    ) -> dict[str, Any]:
        """Two versions compared (default: the current one and the latest): `text` is a
        unified diff of their definitions as YAML."""
        params = {
            name: value
            for name, value in (("from", from_version), ("to", to_version))
            if value is not None
        }
        result: dict[str, Any] = await self._call(
            "GET",
            f"/v1/campaigns/{_segment(campaign_id)}/diff",
            params=params or None,
            headers=self._admin(),
        )
        return result

    # -- operator tools ---------------------------------------------------------------------

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """A user's profile, other ids, consent, journeys and latest deliveries."""
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/users/{_segment(user_id)}", headers=self._admin()
        )
        return result

    async def trigger_occurrence(self, name: str, trigger_id: str) -> dict[str, Any]:
        """An external trigger's occurrence: its outbox row, its fan-out's status and
        counts (`halted`: campaigns stopped mid-way), the campaigns it reaches."""
        result: dict[str, Any] = await self._call(
            "GET",
            f"/v1/triggers/{_segment(name)}/{_segment(trigger_id)}",
            headers=self._admin(),
        )
        return result

    async def campaign_broadcasts(
        self, campaign_id: str, *, limit: int | None = None
    ) -> dict[str, Any]:
        """A scheduled campaign's recent firings, newest first: each fan-out's workflow id,
        status and counts (started, already, skipped, pages, halted)."""
        params = {"limit": limit} if limit is not None else None
        result: dict[str, Any] = await self._call(
            "GET",
            f"/v1/campaigns/{_segment(campaign_id)}/broadcasts",
            params=params,
            headers=self._admin(),
        )
        return result

    async def exit_campaign(
        self,
        campaign_id: str,
        *,
        reason: str,
        step: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Start ending every running journey of a campaign (only those at `step`, when
        given); returns the operation, whose progress `exit_progress` reads."""
        body: dict[str, Any] = {"reason": reason}
        if step is not None:
            body["step"] = step
        if request_id is not None:
            body["request_id"] = request_id
        result: dict[str, Any] = await self._call(
            "POST",
            f"/v1/campaigns/{_segment(campaign_id)}/exit",
            json=body,
            headers=self._admin(),
        )
        return result

    async def exit_progress(self, campaign_id: str, operation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET",
            f"/v1/campaigns/{_segment(campaign_id)}/exit/{_segment(operation_id)}",
            headers=self._admin(),
        )
        return result

    async def recheck_journeys(
        self, *, campaign_id: str | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """Start telling running journeys (one campaign's, or every campaign's) to ask the
        send policy again; returns the operation, whose progress `recheck_progress` reads."""
        body: dict[str, Any] = {}
        if campaign_id is not None:
            body["campaign_id"] = campaign_id
        if request_id is not None:
            body["request_id"] = request_id
        result: dict[str, Any] = await self._call(
            "POST", "/v1/journeys/recheck", json=body, headers=self._admin()
        )
        return result

    async def recheck_progress(self, operation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET",
            "/v1/journeys/recheck",
            params={"operation_id": operation_id},
            headers=self._admin(),
        )
        return result

    async def retry_delivery(self, delivery_id: int) -> dict[str, Any]:
        """Send a failed delivery again (once per retry); the new send's outcome."""
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/deliveries/{int(delivery_id)}/retry", headers=self._admin()
        )
        return result

    # -- simulate ---------------------------------------------------------------------------

    async def simulate(
        self, campaign_id: str, scenario: str, *, version: int | None = None
    ) -> dict[str, Any]:
        """Rehearse a stored campaign version (default: the latest) with a scenario (YAML or
        JSON text): its timeline, each expectation's verdict, and `passed`. A rehearsal
        runs up to a minute on the server: this call waits longer than others."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/v1/campaigns/{_segment(campaign_id)}/simulate",
            params={"version": version} if version is not None else None,
            content=scenario.encode(),
            headers={**self._admin(), "Content-Type": "application/yaml"},
            timeout=90.0,
        )
        return result

    # -- migrations -------------------------------------------------------------------------

    async def migrate_journeys(
        self,
        campaign_id: str,
        *,
        from_version: int,
        to_version: int,
        steps: dict[str, str],
        dry_run: bool = False,
        by: str | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        page_size: int | None = None,
        wait_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Move the journeys waiting in `from_version` to `to_version` (or, `dry_run`, say
        how many sit at each step and where they would land). Either answers with its
        report when it ended within `wait_seconds` (the server's default: 5), else with its
        operation (`operation_id`, `status`, `progress`) for `migration_progress`."""
        body: dict[str, Any] = {
            "from_version": from_version,
            "to_version": to_version,
            "steps": steps,
            "dry_run": dry_run,
        }
        if by is not None:
            body["by"] = by
        if reason is not None:
            body["reason"] = reason
        if request_id is not None:
            body["request_id"] = request_id
        if page_size is not None:
            body["page_size"] = page_size
        if wait_seconds is not None:
            body["wait_seconds"] = wait_seconds
        result: dict[str, Any] = await self._call(
            "POST",
            f"/v1/campaigns/{_segment(campaign_id)}/migrations",
            json=body,
            headers=self._admin(),
            timeout=300.0,
        )
        return result

    async def migration_progress(self, campaign_id: str, operation_id: str) -> dict[str, Any]:
        """A migration's status and its report so far (`progress.report`)."""
        result: dict[str, Any] = await self._call(
            "GET",
            f"/v1/campaigns/{_segment(campaign_id)}/migrations/{_segment(operation_id)}",
            headers=self._admin(),
        )
        return result

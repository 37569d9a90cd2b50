"""core: the send policy — may this message go to this user now? A pure decision over facts
the `check_policy` activity gathers from the store.

Order of the checks, the first that answers wins:
1. a hard-bounce suppression on the channel: suppress, whatever the priority or the
   campaign (`bounced`: it needs nothing else, so it is decided before the campaign version
   is read — a version that no longer validates does not hide a bounce);
2. transactional campaigns: allow (no opt-outs, quiet hours or caps apply to them);
3. unsubscribed from the campaign's group on the channel (or from `*`): suppress;
4. quiet hours in the user's zone (`timezone` trait, else the default): defer to their end;
5. frequency caps (settings and the campaign's own): the store reserves the send against
   each cap atomically — suppress naming the cap it would exceed, else allow.
Checks 2 to 5 are `decide_send`.

Priority under caps ("headroom"): a cap across campaigns (`NUDGE_CAPS`) is shared by every
campaign that counts against it, so a less important message must not use up a slot a more
important one needs later in the window. A send of priority `p` may take a slot of such a cap
only while fewer than `limit - headroom[p]` sends are counted in the window (never less than
one slot: a low-priority campaign under a cap of one still sends): by default `low` leaves
one slot free for `normal` and `high`, and `normal` and `high` use the whole cap
(`NUDGE_CAP_HEADROOM`, e.g. {"low": 1, "normal": 1} keeps the last slot for `high`). Every
send counts, whatever its priority. A campaign's own caps count only its own sends: no
headroom there. First come, first served within what each priority may use; transactional
messages bypass caps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from core.config import CapRule, Settings
from core.definition import CampaignDefinition, Priority
from core.durations import format_duration
from core.journey import PolicyAction, PolicyDecision
from core.schedule import parse_clock, quiet_hours_end, user_zone

ALLOW = PolicyDecision(action=PolicyAction.allow)


def suppress(reason: str) -> PolicyDecision:
    return PolicyDecision(action=PolicyAction.suppress, reason=reason)


@dataclass(frozen=True)
class CapCheck:
    """What one cap counts in the user's ledger: rows within `window`, narrowed to a
    subscription group, a channel and/or a campaign when given. `label` is the reason a
    suppressed send records ("cap: 3 marketing messages per 24h")."""

    limit: int
    window: timedelta
    label: str
    group: str | None = None
    channel: str | None = None
    campaign_id: str | None = None
    allowed: int | None = None
    """How many of the `limit` slots this send may fill (its priority's headroom taken off);
    None: all of them."""

    @property
    def fill(self) -> int:
        """The count in the window (this send included) above which the send is refused."""
        return self.limit if self.allowed is None else self.allowed


@dataclass(frozen=True)
class SendFacts:
    """What checks 2 to 5 look at, read from the store just before a send (of a user whose
    address on the channel is not suppressed)."""

    definition: CampaignDefinition
    """The campaign version the journey runs on."""
    channel: str
    timezone: object
    """The user's `timezone` trait, as the profile holds it (anything a client sent)."""
    unsubscribed: bool = False
    """Opted out of the campaign's subscription group (or of every group) on the channel."""


@dataclass(frozen=True)
class Reserve:
    """Allowed if the send fits under every cap; the store reserves it atomically."""

    caps: tuple[CapCheck, ...]


def bounced(channel: str, reason: str) -> PolicyDecision:
    """Check 1, which needs nothing but the suppression: never to this address."""
    return suppress(f"suppressed on {channel}: {reason}")


def decide_send(facts: SendFacts, *, now: datetime, settings: Settings) -> PolicyDecision | Reserve:
    """Checks 2 to 5 for one send at `now`: an answer, or the caps to reserve against."""
    definition = facts.definition
    if definition.priority is Priority.transactional:
        return ALLOW
    if facts.unsubscribed:
        return suppress(f"unsubscribed from {definition.subscription_group} on {facts.channel}")
    deferred = quiet_hours_decision(now=now, settings=settings, timezone=facts.timezone)
    if deferred is not None:
        return deferred
    return Reserve(
        tuple(
            cap_checks(
                rules=settings.caps,
                definition=definition,
                channel=facts.channel,
                headroom=settings.cap_headroom,
            )
        )
    )


def format_window(window: timedelta) -> str:
    """'24h' for a day or two (how caps are usually said), '7d', '1h30m' otherwise."""
    seconds = int(window.total_seconds())
    if seconds % 3600 == 0 and seconds <= 48 * 3600:
        return f"{seconds // 3600}h"
    return format_duration(window)


def describe_rule(rule: CapRule) -> str:
    """'cap: 3 marketing messages per 24h', 'cap: 1 sms message per 24h'."""
    what = " ".join(part for part in (rule.group, rule.channel) if part)
    noun = "message" if rule.limit == 1 else "messages"
    words = f"{rule.limit} {what} {noun}" if what else f"{rule.limit} {noun}"
    return f"cap: {words} per {format_window(rule.window)}"


def cap_checks(
    *,
    rules: Sequence[CapRule],
    definition: CampaignDefinition,
    channel: str,
    headroom: Mapping[Priority, int] | None = None,
) -> list[CapCheck]:
    """The caps one send counts against: each settings rule whose group and channel (when
    set) match the send — a rule with neither counts every non-transactional send — with the
    slots the campaign's priority may fill (`allowed_slots`), then the campaign's own caps.
    None for a transactional campaign."""
    if definition.priority is Priority.transactional:
        return []
    group = definition.subscription_group
    checks = [
        CapCheck(
            limit=rule.limit,
            window=rule.window,
            label=describe_rule(rule) + _headroom_note(rule.limit, allowed, definition.priority),
            group=rule.group,
            channel=rule.channel,
            allowed=allowed,
        )
        for rule in rules
        if rule.group in (None, group) and rule.channel in (None, channel)
        for allowed in [allowed_slots(rule.limit, definition.priority, headroom or {})]
    ]
    for cap in definition.caps:
        noun = "message" if cap.limit == 1 else "messages"
        checks.append(
            CapCheck(
                limit=cap.limit,
                window=cap.window,
                label=(
                    f"cap: {cap.limit} {noun} of campaign {definition.id} "
                    f"per {format_window(cap.window)}"
                ),
                campaign_id=definition.id,
            )
        )
    return checks


def allowed_slots(limit: int, priority: Priority, headroom: Mapping[Priority, int]) -> int:
    """How many slots of a cap across campaigns a send of `priority` may fill: the limit less
    the headroom it leaves for higher priorities, never less than one."""
    return max(limit - headroom.get(priority, 0), 1)


def _headroom_note(limit: int, allowed: int, priority: Priority) -> str:
    """What a suppression's reason adds when the priority's headroom, not the cap, said no."""
    if allowed >= limit:
        return ""
    kept = limit - allowed
    slots = "slot" if kept == 1 else "slots"
    return f" ({priority.value} priority leaves {kept} {slots} for higher priorities)"


def quiet_hours_decision(
    *, now: datetime, settings: Settings, timezone: object
) -> PolicyDecision | None:
    """`defer` until the quiet window ends when `now` is inside it in the user's zone
    (`timezone` as the trait holds it: an IANA name, else the default zone); else None."""
    if not settings.quiet_hours_start or not settings.quiet_hours_end:
        return None
    tz = user_zone(timezone, settings.default_timezone)
    start = parse_clock(settings.quiet_hours_start)
    end = parse_clock(settings.quiet_hours_end)
    until = quiet_hours_end(now, start, end, tz)
    if until is None:
        return None
    return PolicyDecision(
        action=PolicyAction.defer,
        reason=f"quiet hours {settings.quiet_hours_start}-{settings.quiet_hours_end} in {tz.key}",
        defer_until=until,
    )


LEDGER_MINIMUM = timedelta(days=1)
"""The send ledger keeps at least a day, whatever the caps (none at all included)."""


def ledger_horizon(
    *, rules: Sequence[CapRule], campaign_windows: Mapping[str, Sequence[timedelta]]
) -> tuple[timedelta, dict[str, timedelta]]:
    """How far back the send ledger must remember: the settings caps count every
    campaign's sends, a campaign's own caps only its own. Returns the window for every
    send, and a longer one for each campaign whose own caps reach further."""
    everyone = max([LEDGER_MINIMUM, *(rule.window for rule in rules)])
    longer = {
        campaign_id: max(windows)
        for campaign_id, windows in campaign_windows.items()
        if windows and max(windows) > everyone
    }
    return everyone, longer

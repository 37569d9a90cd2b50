"""core.templates: the filters templates use beyond Jinja2's own — money and dates in the
user's locale and time zone (Babel)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency
from jinja2 import pass_context
from jinja2.runtime import Context
from jinja2.utils import is_undefined

from core.schedule import DEFAULT_TIMEZONE, user_zone

DEFAULT_LOCALE = "en"
LOCALE_KEY = "_locale"
"""Where a render's context keeps the default locale (for users without a `locale` trait)."""
ZONE_KEY = "_zone"
"""Where a render's context keeps the default time zone (users without a `timezone` trait)."""


@lru_cache(maxsize=256)
def _parse_locale(name: str) -> Locale:
    return Locale.parse(name.replace("-", "_"))


def user_locale(context: Mapping[str, Any] | Context) -> Locale:
    """The `locale` trait ('de_DE', 'fr-FR', 'en'), else the context's default, else 'en'."""
    traits = context.get("traits")
    wanted = traits.get("locale") if isinstance(traits, Mapping) else None
    for candidate in (wanted, context.get(LOCALE_KEY), DEFAULT_LOCALE):
        if isinstance(candidate, str) and candidate.strip():
            try:
                return _parse_locale(candidate.strip())
            except (ValueError, TypeError, UnknownLocaleError):
                continue
    return _parse_locale(DEFAULT_LOCALE)


def _zone(context: Mapping[str, Any] | Context) -> ZoneInfo:
    """The user's zone (core.schedule.user_zone): the `timezone` trait, else the render's
    default."""
    traits = context.get("traits")
    wanted = traits.get("timezone") if isinstance(traits, Mapping) else None
    default = context.get(ZONE_KEY)
    return user_zone(wanted, default if isinstance(default, str) else DEFAULT_TIMEZONE)


def _missing(value: Any) -> bool:
    return value is None or is_undefined(value) or value == ""


@pass_context
def money(context: Context, amount: Any, currency: str = "USD") -> str:
    """`{{ 19.5 | money }}` → '$19.50' (en), `{{ 19.5 | money('EUR') }}` → '19,50 €' (de)."""
    if _missing(amount):
        return ""
    try:
        value = Decimal(str(amount)) if not isinstance(amount, bool) else Decimal("nan")
    except InvalidOperation:
        value = Decimal("nan")
    if not value.is_finite() or abs(value) >= Decimal(10) ** 15:
        raise ValueError(f"money: {amount!r} is not an amount of money")
    return format_currency(value, str(currency).upper(), locale=user_locale(context))


def _instant(value: Any, what: str) -> datetime | date:
    """An aware datetime (UTC when none is given), or a plain date for 'YYYY-MM-DD' (a
    birthday is a day, not an instant: it must not move to the day before in New York)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) > 100_000_000_000 else value  # epoch ms
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"{what}: {value!r} is not a time") from exc
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"{what}: {value!r} is not an ISO 8601 date or time") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"{what}: {value!r} is not a date or time")


def _pattern(format: Any, what: str) -> str:
    if not isinstance(format, str) or not 0 < len(format) <= 100:
        raise ValueError(f"{what}: format must be short, medium, long, full or a short pattern")
    return format


@pass_context
def date_filter(context: Context, value: Any, format: str = "medium") -> str:
    """`{{ event.timestamp | date }}` → 'Mar 5, 2025', the day in the user's zone."""
    if _missing(value):
        return ""
    instant = _instant(value, "date")
    day = instant.astimezone(_zone(context)).date() if isinstance(instant, datetime) else instant
    return format_date(day, format=_pattern(format, "date"), locale=user_locale(context))


@pass_context
def datetime_filter(context: Context, value: Any, format: str = "medium") -> str:
    """`{{ event.timestamp | datetime('short') }}` → '3/5/25, 9:30 AM' in the user's zone."""
    if _missing(value):
        return ""
    zone = _zone(context)
    instant = _instant(value, "datetime")
    if not isinstance(instant, datetime):
        instant = datetime(instant.year, instant.month, instant.day, tzinfo=zone)
    return format_datetime(
        instant, format=_pattern(format, "datetime"), tzinfo=zone, locale=user_locale(context)
    )


def _now(context: Mapping[str, Any] | Context) -> datetime:
    now = context.get("now")
    return now if isinstance(now, datetime) else datetime.now(UTC)


@pass_context
def days_until(context: Context, value: Any) -> int | str:
    """Whole days from today to the value's day, both in the user's zone (negative: past)."""
    if _missing(value):
        return ""
    zone = _zone(context)
    instant = _instant(value, "days_until")
    day = instant.astimezone(zone).date() if isinstance(instant, datetime) else instant
    return (day - _now(context).astimezone(zone).date()).days


FILTERS: dict[str, Callable[..., Any]] = {
    "money": money,
    "date": date_filter,
    "datetime": datetime_filter,
    "days_until": days_until,
}

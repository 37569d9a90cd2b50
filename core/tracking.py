"""core: tracked emails — the open pixel and rewritten links of an email's HTML part, and
the signed tokens they carry. Pure, stdlib."""

from __future__ import annotations


def tracked_html(
    html: str, *, secret: str, public_url: str, delivery_id: int, opens: bool, clicks: bool
) -> str:
    """The HTML part with its links rewritten through Nudge and an open pixel added."""
    return html

"""Pagination with opaque page tokens.

A token is URL-safe base64 of JSON holding where the listing continues and a fingerprint
of the query it belongs to, so a token reused with other filters is refused instead of
silently skipping or repeating items.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mlbus.core.errors import InvalidArgument

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a list call asks for: page size (0 = default) and the token of a previous page."""

    size: int = 0
    token: str = ""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results and the token of the next page ('' when this is the last)."""

    items: list[T] = field(default_factory=list)
    next_token: str = ""


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """The page size to use: ``default`` for 0, at most ``maximum``; negative is refused."""
    if requested < 0:
        raise InvalidArgument(
            f"page.page_size: expected 0 (the default, {default}) or more, got {requested}",
            details={"field": "page.page_size"},
        )
    return min(requested or default, maximum)


def _fingerprint(query: Any) -> str:
    text = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_token(query: Any, cursor: Any) -> str:
    """A token continuing ``query`` after ``cursor`` (JSON-serialisable)."""
    raw = json.dumps({"q": _fingerprint(query), "c": cursor}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, query: Any) -> Any:
    """The cursor in ``token`` ('' → None); InvalidArgument when it is malformed or was
    issued for another query."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        fingerprint, cursor = data["q"], data["c"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument(
            "page.page_token: not a token this server issued; pass the next_page_token of "
            "the previous page unchanged",
            details={"field": "page.page_token"},
        ) from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument(
            "page.page_token: issued for a listing with other filters; repeat the query that "
            "returned it, or start again without a token",
            details={"field": "page.page_token"},
        )
    return cursor


def paginate(rows: list[T], limit: int, query: Any, cursor_of: Any) -> Page[T]:
    """Turn ``limit + 1`` fetched rows into a page; ``cursor_of(last item)`` continues it."""
    if len(rows) <= limit:
        return Page(rows, "")
    items = rows[:limit]
    return Page(items, encode_token(query, cursor_of(items[-1])))

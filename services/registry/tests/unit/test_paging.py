"""Opaque page tokens and page sizes."""

from __future__ import annotations

import pytest

from mlbus.core.errors import InvalidArgument
from mlbus.registry.domain.paging import decode_token, encode_token, page_size, paginate


def test_page_size_defaults_and_caps() -> None:
    assert page_size(0, default=50, maximum=1000) == 50
    assert page_size(7, default=50, maximum=1000) == 7
    assert page_size(5000, default=50, maximum=1000) == 1000
    with pytest.raises(InvalidArgument, match=r"page\.page_size"):
        page_size(-1, default=50, maximum=1000)


def test_tokens_round_trip_for_their_query_only() -> None:
    query = {"list": "groups", "prefix": "a"}
    token = encode_token(query, "churn")
    assert decode_token(token, query) == "churn"
    assert decode_token("", query) is None
    with pytest.raises(InvalidArgument, match="other filters"):
        decode_token(token, {"list": "groups", "prefix": "b"})
    for garbage in ("!!!", "eyJ4IjoxfQ", token[:-3]):
        with pytest.raises(InvalidArgument, match=r"page\.page_token"):
            decode_token(garbage, query)


def test_paginate_uses_the_extra_row_to_know_there_is_more() -> None:
    query = {"q": 1}
    last = paginate([1, 2, 3], 3, query, lambda x: x)
    assert last.items == [1, 2, 3]
    assert last.next_token == ""
    more = paginate([1, 2, 3, 4], 3, query, lambda x: x)
    assert more.items == [1, 2, 3]
    assert decode_token(more.next_token, query) == 3

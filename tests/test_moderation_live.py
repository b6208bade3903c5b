"""The live view's query (moderation/live.py): what a moderator may ask, and the errors."""

from __future__ import annotations

import pytest

from moderation.live import MAX_LIMIT, SessionQuery


def test_an_empty_query_is_the_first_page_of_everyone() -> None:
    query = SessionQuery.parse({})
    assert query == SessionQuery()
    assert query.args() == {
        "words": [],
        "state": None,
        "ip": None,
        "flagged": False,
        "reported": False,
        "top": 60,
    }


def test_a_query_with_everything() -> None:
    query = SessionQuery.parse(
        {
            "q": "  Chess  host:12 ",
            "state": "paired",
            "node": "host:12:ab",
            "ip": "203.0.113.7",
            "flagged": "1",
            "reported": "true",
            "offset": "120",
            "limit": "0",
        }
    )
    assert query.words == ("chess", "host:12")
    assert (query.state, query.node, query.ip) == ("paired", "host:12:ab", "203.0.113.7")
    assert query.flagged and query.reported
    assert query.args()["top"] == 120


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ({"limit": str(MAX_LIMIT + 1)}, "limit: a whole number from 0 to 500"),
        ({"limit": "ten"}, "limit: a whole number from 0 to 500"),
        ({"offset": "-1"}, "offset: a whole number from 0 to 1000000"),
        ({"state": "asleep"}, "state: one of idle, waiting, paired"),
        ({"flagged": "yes"}, "flagged: 1 or 0"),
        ({"q": "x" * 201}, "q: at most 200 characters"),
        ({"node": "n" * 201}, "node: at most 200 characters"),
    ],
)
def test_a_bad_query_says_what_is_wrong(query: dict[str, str], said: str) -> None:
    with pytest.raises(ValueError) as refused:
        SessionQuery.parse(query)
    assert str(refused.value) == said

"""The tag index: which connections carry which tag, for targeted broadcast.

Pure bookkeeping, no I/O. Keys are connection ids; members of a tag come back in
the order they were tagged, so a tagged broadcast is delivered in join order.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Final, Generic, TypeVar

__all__ = ["MAX_TAGS", "MAX_TAG_LENGTH", "TagIndex", "validate_tags"]

#: The limits Durable Objects sets on ``acceptWebSocket(ws, tags)``; a bigger tag set
#: makes every tagged broadcast slower for every room user, so it is refused.
MAX_TAGS: Final = 10
MAX_TAG_LENGTH: Final = 256

K = TypeVar("K", bound=Hashable)


def validate_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Return ``tags`` as a tuple without duplicates, or raise ValueError/TypeError."""
    if isinstance(tags, str):
        raise TypeError("tags must be an iterable of strings, not a single string")
    result = tuple(dict.fromkeys(tags))
    for tag in result:
        if not isinstance(tag, str):
            raise TypeError(f"a tag must be a str, not {type(tag).__name__}")
        if not 1 <= len(tag) <= MAX_TAG_LENGTH:
            raise ValueError(f"a tag must be 1 to {MAX_TAG_LENGTH} characters long")
    if len(result) > MAX_TAGS:
        raise ValueError(f"a connection can carry at most {MAX_TAGS} tags, not {len(result)}")
    return result


class TagIndex(Generic[K]):
    """Maps each tag to the keys carrying it.

    A key's own tags are kept by its owner (a connection holds its tag tuple) and
    passed in: a room with one tagged connection then keeps one map, not two, which
    counts for thousands of hibernated rooms.
    """

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: dict[str, dict[K, None]] = {}

    def add(self, key: K, tags: Iterable[str]) -> None:
        """Record that ``key`` carries ``tags``; it goes last among each tag's members."""
        for tag in tags:
            self._members.setdefault(tag, {})[key] = None

    def remove(self, key: K, tags: Iterable[str]) -> None:
        """Record that ``key`` no longer carries ``tags`` (which it had)."""
        for tag in tags:
            members = self._members[tag]
            del members[key]
            if not members:
                del self._members[tag]

    def members(self, tag: str) -> list[K]:
        """The keys carrying ``tag``, in the order they were given it."""
        return list(self._members.get(tag, ()))

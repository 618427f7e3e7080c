"""The tag index: pure bookkeeping."""

from __future__ import annotations

import pytest

from roomkit._core.tags import TagIndex, validate_tags


def test_members_in_tagging_order_and_retagging() -> None:
    index = TagIndex[str]()
    index.add("a", ("red", "all"))
    index.add("b", ("blue", "all"))
    index.add("c", ("red",))
    assert index.members("red") == ["a", "c"]
    assert index.members("all") == ["a", "b"]
    index.remove("a", ("red", "all"))
    index.add("a", ("blue",))
    assert index.members("red") == ["c"]
    assert index.members("blue") == ["b", "a"]
    assert index.members("all") == ["b"]


def test_remove_leaves_no_empty_tags_behind() -> None:
    index = TagIndex[str]()
    index.add("a", ("red",))
    index.add("b", ("red", "blue"))
    index.remove("a", ("red",))
    index.remove("b", ("red", "blue"))
    assert index.members("red") == []
    assert index._members == {}  # no empty maps left behind to grow for ever


def test_validate_tags() -> None:
    assert validate_tags(["a", "b", "a"]) == ("a", "b")
    assert validate_tags(f"t{i}" for i in range(10)) == tuple(f"t{i}" for i in range(10))
    with pytest.raises(ValueError, match="at most 10 tags"):
        validate_tags(f"t{i}" for i in range(11))
    with pytest.raises(ValueError, match="1 to 256 characters"):
        validate_tags([""])
    with pytest.raises(TypeError, match="not a single string"):
        validate_tags("all")
    with pytest.raises(TypeError, match="must be a str"):
        validate_tags([1])


@pytest.mark.parametrize(
    ("tags", "error", "message"),
    [
        ("ab", TypeError, "tags must be an iterable of strings, not a single string"),
        (["a", 1], TypeError, "a tag must be a str, not int"),
        ([""], ValueError, "a tag must be 1 to 256 characters long"),
        (["x" * 257], ValueError, "a tag must be 1 to 256 characters long"),
        ([str(i) for i in range(11)], ValueError, "a connection can carry at most 10 tags, not 11"),
    ],
)
def test_each_bad_tag_list_gets_its_exact_error(
    tags: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        validate_tags(tags)  # type: ignore[arg-type]  # wrong on purpose
    assert str(raised.value) == message


def test_the_longest_tags_and_the_most_tags_are_accepted() -> None:
    assert validate_tags(["x" * 256]) == ("x" * 256,)
    assert validate_tags([str(i) for i in range(10)] + ["0"]) == tuple(str(i) for i in range(10))

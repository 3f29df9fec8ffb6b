"""validate_collecting: every problem is said, also inside tagged unions and containers unknown_keys does not walk."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from dolos_bench.config import Strict, validate_collecting


class Cat(Strict):
    kind: Literal["cat"]
    lives: int = 9


class Dog(Strict):
    kind: Literal["dog"]
    tricks: int = 0


class Home(Strict):
    pets: list[Annotated[Union[Cat, Dog], Field(discriminator="kind")]] = Field(default_factory=list)
    by_name: dict[str, Cat] = Field(default_factory=dict)


def test_unknown_keys_in_a_tagged_union_get_a_suggestion() -> None:
    model, problems = validate_collecting(Home, {"pets": [{"kind": "cat", "live": 3}, {"kind": "dog", "trick": 1}]})
    assert model is None
    assert problems == [("pets.0.live", "unknown key. Did you mean 'lives'?"), ("pets.1.trick", "unknown key. Did you mean 'tricks'?")]


def test_an_unknown_key_where_unknown_keys_does_not_walk_is_still_reported() -> None:
    model, problems = validate_collecting(Home, {"by_name": {"tom": {"kind": "cat", "colour": "grey"}}})
    assert model is None and problems == [("by_name.tom.colour", "unknown key")]


def test_valid_data_passes() -> None:
    model, problems = validate_collecting(Home, {"pets": [{"kind": "dog", "tricks": 2}]})
    assert problems == [] and isinstance(model.pets[0], Dog)

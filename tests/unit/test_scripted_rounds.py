"""The scripted agent's per-run recipe rounds: parsing and which round a run gets."""

import pytest

from orchestrator.agents.scripted import parse_recipe
from orchestrator.cli.demo_project import DEMO_RECIPE, RED_GREEN_RECIPE
from orchestrator.errors import UsageError

ROUNDS = """\
[[files]]
path = "a.py"
content = "a"

[[rounds]]
run = 3
[[rounds.files]]
path = "c.py"
content = "c"

[[rounds]]
run = 1
expect_feedback = ["boom"]
[[rounds.files]]
path = "b.py"
content = "b"
"""


def test_rounds_are_sorted_and_the_latest_eligible_one_applies() -> None:
    recipe = parse_recipe(ROUNDS, "r.toml")
    assert [r.run for r in recipe.rounds] == [1, 3]
    assert recipe.round_for(0) is None
    assert [f.path for f in recipe.round_for(1).files] == ["b.py"]  # type: ignore[union-attr]
    assert recipe.round_for(2).run == 1  # type: ignore[union-attr]
    assert recipe.round_for(7).run == 3  # type: ignore[union-attr]
    assert recipe.round_for(1).expect_feedback == ("boom",)  # type: ignore[union-attr]
    assert [f.path for f in recipe.all_files()] == ["a.py", "b.py", "c.py"]


def test_recipes_without_rounds_are_unchanged() -> None:
    recipe = parse_recipe(DEMO_RECIPE, "demo")
    assert recipe.rounds == ()
    assert recipe.round_for(1) is None
    assert len(recipe.files) == 3


def test_the_red_green_recipe_has_two_rounds() -> None:
    recipe = parse_recipe(RED_GREEN_RECIPE, "red-green")
    assert [r.run for r in recipe.rounds] == [1, 2]
    assert recipe.rounds[1].expect_feedback == ("test_ignores_repeated_spaces",)
    assert 'split(" ")' in recipe.rounds[0].files[0].content
    assert "split()" in recipe.rounds[1].files[0].content


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rounds]]\nrun = 0\n", "'run' must be an integer >= 1"),
        ("[[rounds]]\nrun = 1\n[[rounds]]\nrun = 1\n", "run 1 has two rounds"),
        ("[[rounds]]\nrun = 1\nfoo = 2\n", "unknown key(s) foo"),
        ("rounds = 3\n", "'rounds' must be an array of tables"),
        ("[[rounds]]\nrun = 1\nexpect_feedback = 'x'\n", "must be a list of strings"),
    ],
)
def test_bad_rounds_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(text, "bad.toml")

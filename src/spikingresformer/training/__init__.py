"""Training and evaluation: recipes, the set-up builders, the loops, run folders and distributed helpers."""

from .errors import DivergedError, RunError, RunInterrupted
from .evaluate import run_evaluation
from .recipe import Recipe, RecipeError, load_recipe, parse_overrides, recipe_help
from .train import run_training

__all__ = ["DivergedError", "Recipe", "RecipeError", "RunError", "RunInterrupted", "load_recipe",
           "parse_overrides", "recipe_help", "run_evaluation", "run_training"]

"""Training and evaluation: recipes, the loops, checkpoints and distributed helpers."""

from .evaluate import run_evaluation
from .recipe import Recipe, RecipeError, load_recipe, parse_overrides, recipe_help
from .train import run_training

__all__ = ["Recipe", "RecipeError", "load_recipe", "parse_overrides", "recipe_help", "run_evaluation", "run_training"]

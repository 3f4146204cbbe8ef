"""The pipeline: a recipe (YAML -> configs) -> stages -> bundle, cached by content (:func:`build`).

:func:`load_recipe` reads and validates a recipe file (errors name file:line:column and the key);
:func:`recipe_schema` is its JSON Schema for editors.
"""
from .build import BuildConfig, BuildError, build
from .recipe import (
    KD_TEACHERS,
    RECOVER_MODES,
    STAGES,
    AdaptSpec,
    DataSpec,
    DomainSpec,
    EnsembleRecipe,
    ExportSpec,
    ModelPruneSpec,
    Recipe,
    RecoverSpec,
    list_profiles,
    load_recipe,
    recipe_schema,
)

__all__ = [
    "BuildConfig", "BuildError", "build",
    "KD_TEACHERS", "RECOVER_MODES", "STAGES", "AdaptSpec", "DataSpec", "DomainSpec", "EnsembleRecipe", "ExportSpec",
    "ModelPruneSpec", "Recipe", "RecoverSpec", "list_profiles", "load_recipe", "recipe_schema",
]

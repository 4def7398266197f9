"""The judge (style / genre / score referee) and what evaluate uses of it.

Only the model side is imported here; training lives in `squeezegen.judge.train` so that
evaluate's import closure does not take in the training loop.
"""

from squeezegen.judge.model import (
    FrechetReference,
    Judge,
    frechet_distance,
    judge_images,
    load_judge,
    prepare_images,
    save_judge,
)

__all__ = ["FrechetReference", "Judge", "frechet_distance", "judge_images", "load_judge", "prepare_images", "save_judge"]

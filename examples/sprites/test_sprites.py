"""Semantic unit tests for the sprite shape classifier.

eps is in latent units: each factor axis holds the standardized factor, so eps=1.0 is one
standard deviation of that factor over the data. For the ranges in sprites_data.py:
rotation 1 std = 17.3 degrees, scale 1 std = 0.19, brightness 1 std = 0.19 intensity.
weights/README.md lists how often the prediction changes along each direction.

Two heads share the latent space: `shape_head` (nominal: cross-entropy with mild latent
noise) and `certified_head` (train_certified.py: certified_loss over rotation at eps 0.5
and scale at eps 2.0). The last tests state the same requirements for both.
"""
import pytest

from pytest_latentaudit import Accuracy, Invariance


# +-0.25 std of rotation = +-4.3 degrees. Sampling finds 3 of 199 seeds that change
# class, so 95% is within reach of a proof.
@pytest.mark.latent(direction="rotation", eps=0.25, spec=Accuracy(at_least=0.95))
def test_pose_robust(latent_audit, shape_head, sprite_seeds):
    latent_audit(shape_head, sprite_seeds)


# +-0.5 std of brightness = +-0.09 foreground intensity; no seed changes class.
@pytest.mark.latent(direction="brightness", eps=0.5, spec=Accuracy(at_least=0.95))
def test_brightness_robust(latent_audit, shape_head, sprite_seeds):
    latent_audit(shape_head, sprite_seeds)


# A smaller rotation (+-1.7 degrees) must not change any prediction at all.
@pytest.mark.latent(direction="rotation", eps=0.1, spec=Invariance())
def test_rotation_invariance(latent_audit, shape_head, sprite_seeds):
    latent_audit(shape_head, sprite_seeds)


# +-2 std of scale = +-0.375: a mid-sized sprite can shrink to a few pixels, where squares
# and triangles look alike. About 1 seed in 20 changes class, mostly on the shrinking side.
@pytest.mark.xfail(
    strict=True,
    reason="known violation: shrinking sprites by 2 std of scale makes tiny squares and "
    "triangles ambiguous; ~5% of seeds change class",
)
@pytest.mark.latent(direction="scale", eps=2.0, spec=Accuracy(at_least=0.99))
def test_scale_large_eps(latent_audit, shape_head, sprite_seeds):
    latent_audit(shape_head, sprite_seeds)


# The same requirement for the certified head, trained with CROWN-IBP bounds over +-2 std
# of scale: all 200 of its seeds are proved (none of them changes class anywhere in the box).
@pytest.mark.latent(direction="scale", eps=2.0, spec=Accuracy(at_least=0.99))
def test_scale_large_eps_certified(latent_audit, certified_head, certified_seeds):
    latent_audit(certified_head, certified_seeds)


# +-0.5 std of rotation (+-8.7 degrees), at least 99%: the certified head (trained at this
# eps) has 199 of 200 seeds proved and one counterexample; the nominal head has 6
# counterexamples among its 199 seeds (97.0% at best), so its requirement is violated.
@pytest.mark.latent(direction="rotation", eps=0.5, spec=Accuracy(at_least=0.99))
def test_rotation_robust_certified(latent_audit, certified_head, certified_seeds):
    latent_audit(certified_head, certified_seeds)


@pytest.mark.xfail(
    strict=True,
    reason="nominal training: 6 of 199 seeds change class within +-0.5 std of rotation "
    "(the certified head keeps 199 of 200)",
)
@pytest.mark.latent(direction="rotation", eps=0.5, spec=Accuracy(at_least=0.99))
def test_rotation_robust_nominal(latent_audit, shape_head, sprite_seeds):
    latent_audit(shape_head, sprite_seeds)

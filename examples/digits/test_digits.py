"""Semantic unit tests for two digit classifiers that share one VAE latent space.

eps is in latent units along unit directions (the data's spread along them is about 0.8;
1.0 latent unit of "thickness" adds or removes about 3.4 / 64 of ink per pixel on average,
i.e. ~1.5 standard deviations of a digit's ink mass; 1.0 of "slant" shears by ~0.17
pixels per row). The validity test below checks that the radii used here stay inside
the realistic range of the latent space. Every test digit is a seed, misclassified ones
included, so Accuracy(at_least=q) asks for a *verified accuracy* of q (AuditAI's
1 - verified error). weights/README.md has the numbers behind the thresholds.
"""
import warnings

import pytest

from pytest_latentaudit import Accuracy
from pytest_latentaudit.toolkit import validity


# Thicker or thinner strokes: both heads keep 94% verified accuracy (nominal 425, certified
# 424 of 450 seeds verified; the rest are misclassified or flip inside the range).
@pytest.mark.parametrize("head", ["nominal", "certified"])
@pytest.mark.latent(direction="thickness", eps=1.0, spec=Accuracy(at_least=0.94))
def test_thickness_robust(latent_audit, heads, digit_seeds, head):
    latent_audit(heads[head], digit_seeds)


# Slant: the certified head keeps 95.3% (429 verified)...
@pytest.mark.latent(direction="slant", eps=0.9, spec=Accuracy(at_least=0.945))
def test_slant_robust_certified(latent_audit, certified_head, digit_seeds):
    latent_audit(certified_head, digit_seeds)


# ... the nominal one does not: 29 seeds have concrete counterexamples (93.6% at best).
@pytest.mark.xfail(strict=True, reason="nominal training: 29 of 450 digits change class within +-0.9 of slant")
@pytest.mark.latent(direction="slant", eps=0.9, spec=Accuracy(at_least=0.945))
def test_slant_robust_nominal(latent_audit, nominal_head, digit_seeds):
    latent_audit(nominal_head, digit_seeds)


# Thickness and slant together: a 2-d box (its corners reach further, so a smaller eps;
# decided by linear bounds, attacks and branch and bound). Certified: 427 verified.
@pytest.mark.latent(direction="style", eps=0.5, spec=Accuracy(at_least=0.94))
def test_style_robust_certified(latent_audit, certified_head, digit_seeds):
    latent_audit(certified_head, digit_seeds)


@pytest.mark.xfail(strict=True, reason="nominal training: 29 of 450 digits change class in the +-0.5 style box")
@pytest.mark.latent(direction="style", eps=0.5, spec=Accuracy(at_least=0.94))
def test_style_robust_nominal(latent_audit, nominal_head, digit_seeds):
    latent_audit(nominal_head, digit_seeds)


# The directions mean what they say up to the radii above: the decoder is continuous
# along them, each changes its own attribute (measured on decoded images) much more than
# the other one (relative to each attribute's spread), and the boxes stay where the data is (realism limit, kNN in latent space).
@pytest.mark.parametrize("name,eps", [("thickness", 1.0), ("slant", 0.9), ("style", 0.5)])
def test_direction_is_valid(latent_space, digit_seeds, train_latents, name, eps):
    from digits_data import ATTRIBUTES

    z, _ = digit_seeds
    d = latent_space.direction(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", validity.DirectionValidityWarning)
        cont = validity.check_continuity(latent_space.decoder, z, d, eps)
        real = validity.realism_limit(train_latents, d, z, eps=eps)
        if name in ATTRIBUTES:  # "style" is meant to change both attributes
            ind = validity.check_independence(z, d, eps, ATTRIBUTES, decoder=latent_space.decoder, target=name)
            assert ind["ok"] and ind["probes"][name]["effect"] > 0.5
    assert cont["ok"] and real["ok"]
    assert real["eps"] >= eps

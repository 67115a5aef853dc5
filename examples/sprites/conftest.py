"""Fixtures for the sprite example: the latent space, the two shape heads (nominal and
certified) and their audit seeds."""
import sys
from pathlib import Path

import pytest

# The example is a folder of scripts, not a package; make its modules importable under
# any pytest import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import FACTOR_AXES, audit_seeds, load_certified_head, load_models  # noqa: E402
from pytest_latentaudit import Direction, LatentSpace  # noqa: E402


@pytest.fixture(scope="session")
def sprite_models():
    """(encoder, decoder, head) from the shipped weights, eval mode, CPU."""
    return load_models()


@pytest.fixture(scope="session")
def latent_space(sprite_models):
    # The plugin looks this fixture up by name. Each factor is one latent axis, in units
    # of that factor's standard deviation (see models.FACTOR_AXES).
    encoder, decoder, _ = sprite_models
    return LatentSpace(
        encoder=encoder,
        decoder=decoder,
        directions={name: Direction.axis(axis) for name, axis in FACTOR_AXES.items()},
    )


@pytest.fixture(scope="session")
def shape_head(sprite_models):
    """The square / ellipse / triangle classifier on the 12-d latent code."""
    return sprite_models[2]


@pytest.fixture(scope="session")
def sprite_seeds(sprite_models, shape_head):
    """(z [N, 12], labels [N]): held-out sprites make_sprites(200, seed=2024), encoded,
    keeping the N (199 with the shipped weights) that the head classifies correctly."""
    encoder, _, _ = sprite_models
    return audit_seeds(encoder, shape_head)


@pytest.fixture(scope="session")
def certified_head():
    """A second head of the same architecture on the same latent space, trained with
    pytest_latentaudit.toolkit.training.certified_loss (CROWN-IBP) over rotation (eps 0.5) and
    scale (eps 2.0) by train_certified.py; weights/sprites_certified.pt."""
    return load_certified_head()


@pytest.fixture(scope="session")
def certified_seeds(sprite_models, certified_head):
    """(z, labels) like sprite_seeds, keeping the sprites the *certified* head classifies
    correctly (all 200 with the shipped weights)."""
    encoder, _, _ = sprite_models
    return audit_seeds(encoder, certified_head)

"""Fixtures for the digits example: the latent space (with the two semantic directions
found by train.py), the two heads and the audit seeds (the 450 held-out test digits)."""
import sys
from pathlib import Path

import pytest

# The example is a folder of scripts, not a package; make its modules importable under
# any pytest import mode. Its modules carry a digits_ prefix so that this folder and
# examples/sprites (models.py, train.py) can be collected in one session.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import digits_models  # noqa: E402
from pytest_latentaudit import Direction, LatentSpace  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The networks here are tiny: intra-op threads only cost (a lot, on a busy machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits():
    """Everything in weights/digits.pt (see digits_models.load)."""
    return digits_models.load()


@pytest.fixture(scope="session")
def latent_space(digits):
    # The plugin looks this fixture up by name. "thickness" and "slant" are unit vectors
    # (orthogonal to each other) found by linear probes of ink mass and moment shear,
    # fitted within digit classes; "style" is the plane they span.
    import torch

    vecs = digits["directions"]
    return LatentSpace(
        encoder=digits["encoder"],
        decoder=digits["decoder"],
        directions={
            "thickness": Direction.vector(vecs["thickness"]),
            "slant": Direction.vector(vecs["slant"]),
            "style": Direction.subspace(torch.stack([vecs["thickness"], vecs["slant"]], 1)),
        },
        name="digits-vae",
    )


@pytest.fixture(scope="session")
def heads(digits):
    """{"nominal": head trained with cross-entropy, "certified": head trained with
    training.certified_loss (CROWN-IBP over both directions at eps 1.0)}."""
    return digits["heads"]


@pytest.fixture(scope="session")
def nominal_head(heads):
    return heads["nominal"]


@pytest.fixture(scope="session")
def certified_head(heads):
    return heads["certified"]


@pytest.fixture(scope="session")
def digit_seeds(latent_space):
    """(z [450, 8], labels [450]): every held-out test digit, encoded. Misclassified
    digits stay in: they count against Accuracy, as in AuditAI's verified error."""
    from digits_data import load

    x, y = load("test")
    return latent_space.seeds(x, y)


@pytest.fixture(scope="session")
def train_latents(latent_space):
    from digits_data import load

    x, _ = load("train")
    return latent_space.encode(x)

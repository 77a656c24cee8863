import pytest

from tests.tiny_models import build_tiny_unirep


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny saved-and-reloaded fusion UniRep shared by the whole test session."""
    return build_tiny_unirep(tmp_path_factory.mktemp("tiny"))

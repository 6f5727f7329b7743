import lightning.fabric  # noqa: F401  (binds Lightning's log handler to the session's stderr, not a test's capsys)
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `cuda` on machines without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)

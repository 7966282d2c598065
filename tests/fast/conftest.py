import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for the module (small models: threads only add noise), restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

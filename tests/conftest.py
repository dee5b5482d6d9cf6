import logging
import os

# As the CLI does: a short OpenMP spin, so tests that share the machine do not slow each other 10x or more.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import pytest  # noqa: E402
import torch  # noqa: E402

import mettagrid  # noqa: F401 - importing it lowers the root logger; tests restore it below

logging.getLogger().setLevel(logging.WARNING)
torch.set_num_threads(2)


@pytest.fixture
def small_trainer_layers():
    """A heart-game config small enough for a unit test: 16 agents, 2 epochs of 512 steps."""
    return [
        {
            "game": {"name": "heart"},
            "trainer": {
                "num_envs": 4,
                "batch_size": 512,
                "minibatch_size": 256,
                "bptt_horizon": 16,
                "total_agent_steps": 1024,
                "update_epochs": 1,
            },
        }
    ]

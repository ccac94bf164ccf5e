"""Shared test settings.

Fixtures:
    device: the device every test runs on: ``DIFFOPS_TEST_DEVICE`` (default ``cpu``; set
        ``cuda`` on a GPU machine to run the whole suite there).
    seed: resets torch's global RNG before each test so random MLPs are the same in every run;
        ``DIFFOPS_TEST_SEED`` overrides the value (default 0).
"""

import os

import pytest
import torch

DEVICE = torch.device(os.environ.get("DIFFOPS_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def seed() -> int:
    value = int(os.environ.get("DIFFOPS_TEST_SEED", "0"))
    torch.manual_seed(value)
    return value

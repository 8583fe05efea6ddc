"""Shared fixtures: one local Ray for the tests that need it, and quiet, offline settings."""

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Photo contexts (rlhf.context) go to a folder of this test session, never to the user's cache;
# set here, before Ray starts, so its workers inherit it.
if "PHOTOGRAPHER_CACHE" not in os.environ:
    import tempfile

    os.environ["PHOTOGRAPHER_CACHE"] = tempfile.mkdtemp(prefix="photographer-test-contexts-")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs), started once per test session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

"""Shared fixtures: small generated datasets and quiet TensorFlow logs."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
# Child processes (``python -m pipelines.x`` from a temporary directory) import this checkout's peterrec,
# not whichever copy happens to be installed in the environment.
os.environ["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


@pytest.fixture(autouse=True)
def _isolate_op_determinism():
    """TF op determinism is process-wide: a test that turns it on (or runs a ``deterministic=True`` Trainer, which
    does) turns it off again when it ends, so later tests run with the default kernels they were written for.
    A test that needs it turns it on itself (a deterministic Trainer does)."""
    yield
    tf_config = sys.modules.get("tensorflow.python.framework.config")
    if tf_config is not None and tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small synthetic world (800 users, 400 items) with the default data's structure."""
    from peterrec.data import synthetic

    out = tmp_path_factory.mktemp("small_world")
    synthetic.generate(str(out), seed=7, n_users=800, n_items=400, n_target_items=100, length_median=30.0)
    return out


@pytest.fixture
def shared_dir():
    if not os.path.isdir(SHARED):
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture
def tiny_inter(tmp_path):
    """A tiny RecBole .inter file (120 users, 40 items, 10-19 items each) at ``<tmp>/tiny/tiny.inter``:
    users mostly step to the next item id, so a model can learn it in one epoch."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(120):
        item = int(rng.integers(40))
        for t in range(int(rng.integers(10, 20))):
            lines.append(f"u{u}\ti{item}\t{t}")
            item = (item + 1) % 40 if rng.random() < 0.8 else int(rng.integers(40))
    path = tmp_path / "tiny" / "tiny.inter"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path

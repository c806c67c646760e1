"""Shared fixtures: small generated datasets and quiet TensorFlow logs."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # pytest-xdist runs one worker per core: one thread per TensorFlow pool in each (and in the command lines
    # they start) instead of every worker's pools contending for all cores (2 cores: 83 s instead of 97 s for two files).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
# Child processes (``python -m pipelines.x`` from a temporary directory) import this checkout's peterrec,
# not whichever copy happens to be installed in the environment.
os.environ["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def pytest_sessionstart(session):
    """The embedded default dataset (Data/synthetic, generated, not tracked) exists before any worker starts."""
    from peterrec.data import synthetic

    synthetic.ensure_default(os.path.join(REPO, synthetic.DEFAULT_DIR, synthetic.SOURCE_FILE))


def pytest_collection_modifyitems(items):
    """Longest files first. pytest-xdist (``--dist loadfile --no-loadscope-reorder``, pytest.ini) hands each worker the
    next file in collection order when it runs low, so no long file starts last while the other worker idles. The
    seconds per file are those ``python -m benchmarks.test_suite`` measured last; files it has not seen (new, or skipped in
    that run) go first, as if long, so none of them can start last."""
    import json

    path = os.path.join(REPO, "benchmarks", "results", "test_suite.json")
    seconds = json.load(open(path))["per_file_seconds"] if os.path.exists(path) else {}
    items.sort(key=lambda item: -seconds.get(os.path.relpath(str(item.path), REPO).replace(os.sep, "/"), float("inf")))  # stable


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


@pytest.fixture(scope="session")
def mini_world(tmp_path_factory):
    """The small world's structure at a quarter of its size (200 users, 200 items): for tests of plumbing
    (resume, refusals, exports, command lines) that do not judge learning."""
    from peterrec.data import synthetic

    out = tmp_path_factory.mktemp("mini_world")
    synthetic.generate(str(out), seed=7, n_users=200, n_items=200, n_target_items=100, length_median=20.0)
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


class CommandLines:
    """``cli(module, argv, cwd=..., env=..., timeout=...)`` runs ``python -m <module> <argv>`` as a forked child of
    one server process that imported TensorFlow once (``tests/cli_server.py``) and returns a
    ``subprocess.CompletedProcess`` (text stdout/stderr); ``env`` entries are set on top of this process's
    environment (None unsets one). A command line that runs past ``timeout`` is killed and raises ``subprocess.TimeoutExpired``."""

    def __init__(self, scratch):
        import subprocess

        self._scratch, self._count = scratch, 0
        self._server = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "cli_server.py")], cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        ready = self._server.stdout.readline()
        if not ready:
            raise RuntimeError(f"the command-line server did not start (exit {self._server.wait()})")

    def __call__(self, module, argv, cwd=REPO, env=None, timeout=600):
        return self._run(dict(op="run", module=module), ["python", "-m", module], argv, cwd, env, timeout)

    def code(self, code, argv=(), cwd=REPO, env=None, timeout=600):
        """``python -c code argv...``."""
        return self._run(dict(op="run", module=None, code=code), ["python", "-c", code], argv, cwd, env, timeout)

    def _run(self, what, command, argv, cwd, env, timeout):
        import subprocess

        command, request = self._request(what, command, argv, cwd, env, timeout)
        reply = self._ask(request)
        stdout, stderr = _outputs(request["out"])
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
        return subprocess.CompletedProcess(command, reply["code"], stdout, stderr)

    def start(self, module, argv, cwd=REPO, env=None, code=None):
        """``python -m module argv...`` (``module=None``: ``python -c code argv...``) started in the background, in a
        process group of its own: a :class:`Started` (``pid``, ``poll``, ``wait``, ``send_signal``, ``kill``,
        ``communicate``, ``returncode``) as ``subprocess.Popen`` gives."""
        what, command = (dict(op="start", module=module), ["python", "-m", module]) if module else (
            dict(op="start", module=None, code=code), ["python", "-c", code])
        command, request = self._request(what, command, argv, cwd, env, 0)
        return Started(self, command, self._ask(request)["pid"], request["out"])

    def _request(self, what, command, argv, cwd, env, timeout):
        self._count += 1
        out = os.path.join(self._scratch, str(self._count))
        os.makedirs(out)
        merged = {k: v for k, v in dict(os.environ, **(env or {})).items() if v is not None}  # None: unset
        request = dict(what, argv=[str(a) for a in argv], cwd=str(cwd), env=merged, out=out, timeout=timeout)
        return [*command, *request["argv"]], request

    def _ask(self, request):
        import json

        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        line = self._server.stdout.readline()
        if not line:
            raise RuntimeError(f"the command-line server stopped (exit {self._server.wait()})")
        return json.loads(line)

    def close(self):
        self._server.stdin.close()
        self._server.wait(timeout=60)


def _outputs(out):
    return tuple(open(os.path.join(out, name), errors="replace").read() for name in ("stdout", "stderr"))


class Started:
    """A command line of :meth:`CommandLines.start`, driven as a ``subprocess.Popen`` (text stdout/stderr)."""

    def __init__(self, server, args, pid, out):
        self._server, self.args, self.pid, self._out, self.returncode = server, args, pid, out, None

    def poll(self):
        return self._wait(0)

    def wait(self, timeout=None):
        import subprocess

        if self._wait(timeout if timeout is not None else 1e9) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _wait(self, timeout):
        if self.returncode is None:
            self.returncode = self._server._ask(dict(op="wait", pid=self.pid, timeout=timeout))["code"]
        return self.returncode

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        import signal

        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout=None):
        self.wait(timeout)
        return _outputs(self._out)


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    server = CommandLines(str(tmp_path_factory.mktemp("cli")))
    yield server
    server.close()

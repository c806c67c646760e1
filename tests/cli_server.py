"""A fork server for command-line tests: one process imports TensorFlow and the library once, then runs each
``python -m pipelines.<job> ...`` command line in a forked child of its own (absl flag parsing, exit codes,
stdout/stderr, working directory and environment as a real command line), so a case costs what the job does,
not a TensorFlow import (~7 s on the 2-core CI machine).

Used through the ``cli`` fixture of ``conftest.py``; run as ``python tests/cli_server.py`` it serves JSON lines
on stdin: ``{"op": "run", "module" (or null and "code"), "argv", "cwd", "env", "out", "timeout"}`` -> ``{"code",
"timed_out"}``; ``"op": "start"`` (same fields) -> ``{"pid"}`` at once, then ``{"op": "wait", "pid", "timeout"}`` -> ``{"code"}``
(null while it runs).
"""

import json
import os
import runpy
import signal
import sys
import time
import traceback


def _child(request, replies):
    os.close(replies)  # the reply stream is the server's alone
    os.setpgid(0, 0)  # its own process group: a timeout kills what it started too
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(os.path.join(request["out"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # as `python -m` from that directory
    sys.argv = [request["module"] or "-c", *request["argv"]]
    code = 0
    try:
        if request["module"]:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:  # python -c CODE
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (reported as the interpreter would: traceback, exit 1)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve():
    import tensorflow  # noqa: F401  (imported once: every command line is a fork of this process)
    import keras  # noqa: F401

    import peterrec.evaluation, peterrec.finetuning, peterrec.inference, peterrec.patches, peterrec.pretraining  # noqa: F401,E401
    from pipelines import flags  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")  # as every job's curves.png
    import matplotlib.pyplot  # noqa: F401

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints of the server go to stderr, never into the reply stream
    print(json.dumps({"ready": True}), file=replies, flush=True)
    exited = {}  # pid -> exit code of a started child reaped by now
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op", "run")
        if op in ("run", "start"):
            pid = os.fork()
            if pid == 0:
                _child(request, replies.fileno())
            if op == "start":
                reply = {"pid": pid}
            else:
                code = _wait(pid, request["timeout"])
                timed_out = code is None
                if timed_out:
                    os.killpg(pid, signal.SIGKILL)
                    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                reply = {"code": code, "timed_out": timed_out}
        else:  # "wait" (up to "timeout" seconds; 0: poll) for a started child
            pid = request["pid"]
            if pid not in exited:
                code = _wait(pid, request["timeout"])
                if code is not None:
                    exited[pid] = code
            reply = {"code": exited.get(pid)}
        print(json.dumps(reply), file=replies, flush=True)


def _wait(pid, timeout):
    """The exit code of child ``pid`` once it ends within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)

if __name__ == "__main__":
    _serve()

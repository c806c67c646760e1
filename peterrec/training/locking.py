"""One job per model_dir: an OS-level lock on ``<model_dir>/.lock``.

A training job takes an exclusive ``fcntl.flock`` on ``<model_dir>/.lock``
before it writes anything into the directory, and writes its pid, host,
command line and start time into the file. A second job pointed at the same
``--model_dir`` is refused with a :class:`~peterrec.errors.ConfigError` that
names the holder. The operating system drops the lock when the holding
process exits or dies (``SIGKILL`` included), so a stale ``.lock`` file never
blocks a later job; the file itself stays (it is only a record).

The lock is per process and re-entrant: acquiring a directory the process
already holds is a no-op, so a job and the :class:`~peterrec.training.Trainer`
it builds can both ask for it. It is held until the process exits or
:func:`release` is called. Under multi-worker training only the chief takes it
(:func:`is_chief_task`); the other workers write elsewhere.

``flock`` is advisory and local to one kernel: on network file systems without
lock support (``ENOLCK``) the job continues with a warning and no lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from absl import logging

from peterrec.errors import ConfigError

LOCK_FILE = ".lock"
_held: dict[str, object] = {}  # realpath(model_dir) -> the open lock file


def acquire(model_dir: str) -> str:
    """Take the lock of ``model_dir`` for this process (created if missing); returns the lock file's path.

    Raises:
        ConfigError: another process holds the lock; the message names its pid, host and command.
    """
    key = os.path.realpath(model_dir)
    path = os.path.join(model_dir, LOCK_FILE)
    if key in _held:
        return path
    os.makedirs(model_dir, exist_ok=True)
    stream = open(path, "a+", encoding="utf-8")  # "a+": never truncate a file someone else may hold
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno == errno.ENOLCK:
            stream.close()
            logging.warning("%s: the file system does not support locks; another job could write into %s", path, model_dir)
            return path
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            stream.close()
            raise
        stream.seek(0)
        holder = _describe(stream.read())
        stream.close()
        raise ConfigError(
            f"--model_dir {model_dir} is in use by {holder}; wait for that job to finish "
            "(the lock is released when it exits) or use another --model_dir"
        ) from None
    stream.seek(0)
    stream.truncate()
    json.dump(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        stream,
    )
    stream.write("\n")
    stream.flush()
    _held[key] = stream
    return path


def release(model_dir: str) -> None:
    """Release this process's lock on ``model_dir`` (no-op if it holds none)."""
    stream = _held.pop(os.path.realpath(model_dir), None)
    if stream is not None:
        stream.close()  # closing the only descriptor drops the flock


def holds(model_dir: str) -> bool:
    """Whether this process holds the lock of ``model_dir``."""
    return os.path.realpath(model_dir) in _held


def is_chief_task(tf_config: str | None) -> bool:
    """Whether the task described by a ``TF_CONFIG`` JSON string writes the job's outputs.

    No cluster (``None`` or no ``cluster``): yes. Otherwise the ``chief`` task,
    or worker 0 of a cluster without a chief (as :func:`peterrec.training.is_chief`).
    """
    if not tf_config:
        return True
    try:
        config = json.loads(tf_config)
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {err}") from None
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    return not cluster or kind in (None, "chief") or (kind == "worker" and index == 0 and "chief" not in cluster)


def _describe(text: str) -> str:
    """The holder recorded in a lock file, in words."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']} (command: {holder['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process (its pid was not yet recorded)"

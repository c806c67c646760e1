"""File helpers every layer uses: atomic writes (temp file or directory in place, then rename) and hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile


def write_atomic(path, fill, encoding=None, binary=False):
    """Write the file ``path`` atomically: ``fill(file)`` writes a temp file in the same directory
    (created if missing), which is then renamed into place; on any error the temp file is removed.
    ``binary``: the file is opened in ``"wb"`` mode (``encoding`` is then ignored)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding)) as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, payload):
    """Write JSON atomically (temp file in the same directory, then rename)."""
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n"))


def file_sha256(path):
    """The sha256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

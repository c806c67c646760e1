"""TFRecord sets: one ``tf.train.Example`` per user, sharded, with a manifest.

A TFRecord set is a directory::

    data-00000-of-00008.tfrecord ... data-00007-of-00008.tfrecord
    metadata.json      # counts, filters, split, vocab hash and the "shards" manifest
    vocab.json         # written by peterrec.data.convert (and target_vocab.json for finetuning data)

Example schema (``SCHEMA_VERSION`` 1):

============== ===================== =====================================================
feature        stored as             meaning
============== ===================== =====================================================
``user``       bytes                 raw user id
``items``      int64 list            encoded item ids, oldest first
``timestamps`` int64 list            seconds, same length as ``items``, or empty
``role``       int64 scalar          ``features.ROLE_*``
``targets``    int64 list            encoded target ids (finetuning data), else empty
============== ===================== =====================================================

Records are dealt to the shards round-robin, so shard sizes differ by at most
one record. The set is written into a sibling temporary directory and renamed
into place at the end, so a failed write leaves nothing behind.

The manifest (``metadata.json`` ``shards``) records each shard's ``records``,
``bytes`` and ``sha256``. Every load checks that each shard exists with its
recorded size (a truncated shard is named); :func:`verify_set`
(``pipelines.convert --verify``) also checks the checksums and reads every
record, so TFRecord's own CRCs catch a corrupted record and the record
counts are compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

import tensorflow as tf

from peterrec.errors import ConfigError, DataError

SCHEMA_VERSION = 1
METADATA_FILENAME = "metadata.json"
SHARD_PATTERN = "data-{index:05d}-of-{count:05d}.tfrecord"

_FEATURE_SPEC = {
    "user": tf.io.FixedLenFeature([], tf.string),
    "items": tf.io.RaggedFeature(tf.int64),
    "timestamps": tf.io.RaggedFeature(tf.int64),
    "role": tf.io.FixedLenFeature([], tf.int64),
    "targets": tf.io.RaggedFeature(tf.int64),
}


def _int64_feature(values: Iterable[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value) for value in values]))


def _bytes_feature(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


def _as_list(values: Iterable[int] | None) -> list:
    """Returns ``values`` as a list (``None`` -> empty); works for numpy arrays."""
    return [] if values is None else list(values)


def serialize_record(record: Mapping) -> bytes:
    """Serialises one user record to a ``tf.train.Example``.

    Args:
        record: A mapping with ``user`` (str), ``items`` (int ids), ``role``
            (int) and optionally ``timestamps`` (ints, same length as
            ``items``, or empty/None) and ``targets`` (int ids or None).

    Returns:
        The serialised example.

    Raises:
        DataError: ``timestamps`` has a different length than ``items``.
    """
    items = list(record["items"])
    timestamps = _as_list(record.get("timestamps"))
    if timestamps and len(timestamps) != len(items):
        raise DataError(f"user {record['user']!r}: {len(timestamps)} timestamps for {len(items)} items")
    feature = {
        "user": _bytes_feature(str(record["user"])),
        "items": _int64_feature(items),
        "timestamps": _int64_feature(timestamps),
        "role": _int64_feature([record["role"]]),
        "targets": _int64_feature(_as_list(record.get("targets"))),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def graph_fn(fn):
    """``fn`` as a tf.data (or ``tf.function``) graph function, traced as written: AutoGraph does not rewrite its
    source (about 50 ms a function, a third of a small job's tracing, every time a pipeline is built). Every graph
    function of this library uses ``tf.cond`` / ``tf.while_loop`` / vectorised ops, never Python control flow on tensors."""
    return tf.autograph.experimental.do_not_convert(fn)


@graph_fn
def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialised example (use inside ``tf.data.Dataset.map``).

    Args:
        serialized: A scalar string tensor.

    Returns:
        ``items`` int32 ``[n]``, ``timestamps`` int64 ``[n]`` or ``[0]``,
        ``role`` int32 ``[]``, ``targets`` int32 ``[m]`` and ``user`` string
        ``[]``.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURE_SPEC)
    return {
        "user": parsed["user"],
        "items": tf.cast(parsed["items"], tf.int32),
        "timestamps": parsed["timestamps"],
        "role": tf.cast(parsed["role"], tf.int32),
        "targets": tf.cast(parsed["targets"], tf.int32),
    }


def write_tfrecord_set(
    records: Iterable[Mapping],
    output_dir: str,
    num_shards: int,
    metadata: Mapping,
    *,
    overwrite: bool = False,
    assets: Mapping[str, Callable[[str], object]] | None = None,
) -> dict:
    """Writes records into a sharded TFRecord set, atomically.

    Args:
        records: User records (see :func:`serialize_record`).
        output_dir: Directory of the set; must be absent or empty unless
            ``overwrite``.
        num_shards: Number of shard files (>= 1).
        metadata: Written to ``metadata.json`` with ``schema_version`` (if
            missing) and the ``shards`` manifest added.
        overwrite: Replace an existing non-empty ``output_dir``.
        assets: ``{file name: writer}``; each ``writer(path)`` is called to
            write an extra file (e.g. ``{"vocab.json": vocab.save}``) into the
            set before it is moved into place.

    Returns:
        The metadata as written, including ``shards``: a list of
        ``{"file", "records", "bytes"}``.

    Raises:
        ConfigError: ``num_shards < 1``.
        DataError: ``output_dir`` exists and is non-empty (and not
            ``overwrite``), or is a file.
    """
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    check_output_dir(output_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    temp_dir = _sibling_path(output_dir, "tmp")
    os.mkdir(temp_dir)  # unlike mkdtemp, honours the umask
    try:
        shards = _write_shards(records, temp_dir, num_shards)
        written = {"schema_version": SCHEMA_VERSION, **metadata, "shards": shards}
        _write_json(os.path.join(temp_dir, METADATA_FILENAME), written)
        for name, writer in (assets or {}).items():
            writer(os.path.join(temp_dir, name))
        _move_into_place(temp_dir, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return written


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Raises DataError unless ``output_dir`` may be (over)written.

    Args:
        output_dir: The directory a TFRecord set will be written to.
        overwrite: Whether an existing non-empty directory may be replaced.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DataError(f"{output_dir}: exists and is not a directory")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise DataError(f"{output_dir}: directory exists and is not empty; pass overwrite=True (--overwrite) to replace it")


def _write_shards(records: Iterable[Mapping], directory: str, num_shards: int) -> list[dict]:
    """Deals the records round-robin into ``num_shards`` files."""
    names = [SHARD_PATTERN.format(index=index, count=num_shards) for index in range(num_shards)]
    counts = [0] * num_shards
    writers = [tf.io.TFRecordWriter(os.path.join(directory, name)) for name in names]
    try:
        for position, record in enumerate(records):
            writers[position % num_shards].write(serialize_record(record))
            counts[position % num_shards] += 1
    finally:
        for writer in writers:
            writer.close()
    return [
        {
            "file": name,
            "records": count,
            "bytes": os.path.getsize(os.path.join(directory, name)),
            "sha256": file_sha256(os.path.join(directory, name)),
        }
        for name, count in zip(names, counts)
    ]


def file_sha256(path: str, extra: bytes = b"") -> str:
    """Returns the SHA-256 hex digest of a file's bytes followed by ``extra``."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(extra)
    return digest.hexdigest()


def _move_into_place(temp_dir: str, output_dir: str, overwrite: bool) -> None:
    """Renames ``temp_dir`` to ``output_dir``, replacing the old one if allowed."""
    old_dir = None
    if os.path.isdir(output_dir):
        if os.listdir(output_dir) and not overwrite:
            raise DataError(f"{output_dir}: directory was filled by someone else while writing; not replacing it")
        old_dir = _sibling_path(output_dir, "old")
        os.rename(output_dir, old_dir)
    try:
        os.rename(temp_dir, output_dir)
    except OSError:
        if old_dir is not None:
            os.rename(old_dir, output_dir)
        raise
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)


def _sibling_path(path: str, kind: str) -> str:
    """Returns an unused hidden path next to ``path``, e.g. ``.name.tmp-1a2b3c4d``."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.dirname(absolute), f".{os.path.basename(absolute)}.{kind}-{uuid.uuid4().hex[:12]}")


def _write_json(path: str, data: Mapping) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, ensure_ascii=False)
        stream.write("\n")


def load_metadata(set_dir: str) -> dict:
    """Reads ``metadata.json`` of a TFRecord set and checks its shards.

    Args:
        set_dir: The TFRecord set directory.

    Returns:
        The metadata dict.

    Raises:
        DataError: ``metadata.json`` is missing or invalid, or a shard is
            missing or its byte size differs from the manifest (truncated or
            replaced); the message names the shard.
    """
    path = os.path.join(set_dir, METADATA_FILENAME)
    if not os.path.isfile(path):
        raise DataError(f"{set_dir}: not a TFRecord set ({METADATA_FILENAME} not found); write one with pipelines.convert")
    try:
        with open(path, encoding="utf-8") as stream:
            metadata = json.load(stream)
        shards = metadata["shards"]
        _check_shards(set_dir, shards)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: invalid TFRecord set metadata: {err!r}") from None
    return metadata


def _check_shards(set_dir: str, shards: Sequence[Mapping]) -> None:
    """Raises DataError naming the first missing or wrongly sized shard."""
    for shard in shards:
        shard_path = os.path.join(set_dir, shard["file"])
        if not os.path.isfile(shard_path):
            raise DataError(f"{shard_path}: shard listed in {METADATA_FILENAME} is missing")
        size = os.path.getsize(shard_path)
        if size != shard["bytes"]:
            raise DataError(f"{shard_path}: shard has {size} bytes, {METADATA_FILENAME} records {shard['bytes']} (truncated or modified)")


def verify_set(set_dir: str) -> dict:
    """Fully checks a TFRecord set: sizes, SHA-256 checksums, record CRCs and record counts.

    Returns:
        ``{"shards", "records", "bytes", "checksums"}``; ``checksums`` is
        False for a set written before the manifest recorded them (its
        sizes, CRCs and counts are still checked).

    Raises:
        DataError: naming the first shard that is missing, truncated,
            modified, corrupted or holds another number of records.
    """
    metadata = load_metadata(set_dir)
    shards = metadata["shards"]
    total_records = total_bytes = 0
    for shard in shards:
        path = os.path.join(set_dir, shard["file"])
        if shard.get("sha256") and file_sha256(path) != shard["sha256"]:
            raise DataError(f"{path}: SHA-256 differs from {METADATA_FILENAME} (the shard was modified or corrupted)")
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except tf.errors.DataLossError as err:
            reason = " ".join(re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|name:\s*$", "", err.message.splitlines()[0]).split())  # TF's decorations
            raise DataError(f"{path}: corrupted record after {count} good ones ({reason})") from None
        if count != shard["records"]:
            raise DataError(f"{path}: holds {count} records, {METADATA_FILENAME} records {shard['records']}")
        total_records, total_bytes = total_records + count, total_bytes + shard["bytes"]
    return {
        "shards": len(shards),
        "records": total_records,
        "bytes": total_bytes,
        "checksums": all(shard.get("sha256") for shard in shards),
    }


def shard_files(set_dir: str) -> list[str]:
    """Returns the checked shard paths of a TFRecord set, in manifest order."""
    return [os.path.join(set_dir, shard["file"]) for shard in load_metadata(set_dir)["shards"]]

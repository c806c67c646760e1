"""Tests of peterrec.data.tfrecord: schema round trip, shards, manifest checks, atomic writes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from peterrec import features
from peterrec.data.tfrecord import load_metadata, parse_example, shard_files, write_tfrecord_set
from peterrec.errors import ConfigError, DataError

RECORDS = [
    {"user": "u0", "items": [4, 5, 6], "timestamps": [1, 2, 3], "role": features.ROLE_LOO, "targets": None},
    {"user": "ü 1", "items": [7], "timestamps": None, "role": features.ROLE_TRAIN},
    {"user": "u2", "items": np.array([5, 1]), "timestamps": [], "role": features.ROLE_VALID, "targets": [4, 5]},
    {"user": "u3", "items": [], "timestamps": [], "role": features.ROLE_TEST, "targets": [6]},
]


def read_set(set_dir):
    """Returns every record of a TFRecord set as numpy values, in shard order."""
    dataset = tf.data.TFRecordDataset(shard_files(set_dir)).map(parse_example)
    return [{key: value.numpy() for key, value in row.items()} for row in dataset]


def write(tmp_path, records=RECORDS, num_shards=2, name="set", **kwargs):
    return write_tfrecord_set(records, str(tmp_path / name), num_shards, {"source": "test"}, **kwargs)


def test_round_trip_dtypes_and_values(tmp_path):
    write(tmp_path, num_shards=1)
    rows = read_set(str(tmp_path / "set"))
    assert len(rows) == len(RECORDS)
    for row, record in zip(rows, RECORDS):
        assert row["user"].decode("utf-8") == record["user"]
        assert row["items"].dtype == np.int32 and row["items"].tolist() == list(record["items"])
        assert row["timestamps"].dtype == np.int64 and row["timestamps"].tolist() == list(record["timestamps"] or [])
        assert row["role"].dtype == np.int32 and row["role"] == record["role"]
        assert row["targets"].dtype == np.int32 and row["targets"].tolist() == list(record.get("targets") or [])


def test_parse_example_shapes_in_tf_data(tmp_path):
    write(tmp_path)
    spec = tf.data.TFRecordDataset(shard_files(str(tmp_path / "set"))).map(parse_example).element_spec
    assert spec["items"].shape.as_list() == [None] and spec["role"].shape.as_list() == []
    assert spec["user"].dtype == tf.string and spec["timestamps"].dtype == tf.int64


def test_shards_are_balanced_and_manifest_is_exact(tmp_path):
    records = [{"user": f"u{i}", "items": [4] * (i + 1), "role": 0} for i in range(10)]
    metadata = write(tmp_path, records, num_shards=4)
    set_dir = str(tmp_path / "set")
    shards = metadata["shards"]
    assert [shard["file"] for shard in shards] == [f"data-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert [shard["records"] for shard in shards] == [3, 3, 2, 2]
    assert all(shard["bytes"] == os.path.getsize(os.path.join(set_dir, shard["file"])) for shard in shards)
    assert load_metadata(set_dir) == metadata == json.load(open(os.path.join(set_dir, "metadata.json")))
    assert metadata["schema_version"] == 1 and metadata["source"] == "test"
    assert sorted(row["user"].decode() for row in read_set(set_dir)) == sorted(r["user"] for r in records)


def test_more_shards_than_records(tmp_path):
    metadata = write(tmp_path, RECORDS[:1], num_shards=3)
    assert [shard["records"] for shard in metadata["shards"]] == [1, 0, 0]
    assert len(read_set(str(tmp_path / "set"))) == 1


def test_refuses_non_empty_dir_unless_overwrite(tmp_path):
    (tmp_path / "set").mkdir()
    write(tmp_path)  # an empty directory is fine
    with pytest.raises(DataError, match=r"set: directory exists and is not empty"):
        write(tmp_path)
    write(tmp_path, RECORDS[:1], num_shards=1, overwrite=True)
    assert sorted(os.listdir(tmp_path / "set")) == ["data-00000-of-00001.tfrecord", "metadata.json"]
    assert os.listdir(tmp_path) == ["set"]  # no temp or old directories left


def test_assets_are_written_into_the_set(tmp_path):
    def write_note(path):
        with open(path, "w") as stream:
            stream.write("hello")

    write(tmp_path, assets={"note.txt": write_note})
    assert (tmp_path / "set" / "note.txt").read_text() == "hello"


def test_failed_write_leaves_nothing(tmp_path):
    def records():
        yield RECORDS[0]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        write(tmp_path, records())
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="2 timestamps for 1 items"):
        write(tmp_path, [{"user": "u", "items": [4], "timestamps": [1, 2], "role": 0}])
    assert os.listdir(tmp_path) == []


def test_truncated_or_missing_shard_is_named(tmp_path):
    write(tmp_path)
    set_dir = tmp_path / "set"
    shard = set_dir / "data-00001-of-00002.tfrecord"
    content = shard.read_bytes()
    shard.write_bytes(content[:-5])
    with pytest.raises(DataError, match=r"data-00001-of-00002\.tfrecord: shard has \d+ bytes"):
        load_metadata(str(set_dir))
    shard.unlink()
    with pytest.raises(DataError, match=r"data-00001-of-00002\.tfrecord: shard listed in metadata\.json is missing"):
        shard_files(str(set_dir))


def test_missing_or_invalid_metadata(tmp_path):
    with pytest.raises(DataError, match="not a TFRecord set"):
        load_metadata(str(tmp_path))
    (tmp_path / "metadata.json").write_text('{"no_shards": 1}')
    with pytest.raises(DataError, match=r"metadata\.json: invalid TFRecord set metadata"):
        load_metadata(str(tmp_path))


def test_bad_num_shards(tmp_path):
    with pytest.raises(ConfigError, match="num_shards"):
        write(tmp_path, num_shards=0)


def test_manifest_checksums_and_full_verification(tmp_path):
    from peterrec.data.tfrecord import file_sha256, verify_set

    metadata = write(tmp_path)
    set_dir = tmp_path / "set"
    assert all(shard["sha256"] == file_sha256(str(set_dir / shard["file"])) for shard in metadata["shards"])
    assert verify_set(str(set_dir)) == {"shards": 2, "records": 4, "bytes": sum(s["bytes"] for s in metadata["shards"]), "checksums": True}
    shard = set_dir / "data-00000-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size: only the checksum (or the record CRC) sees it
    shard.write_bytes(bytes(data))
    load_metadata(str(set_dir))  # the cheap size check on every load passes
    with pytest.raises(DataError, match=r"data-00000-of-00002\.tfrecord: SHA-256 differs"):
        verify_set(str(set_dir))
    manifest = json.load(open(set_dir / "metadata.json"))
    for entry in manifest["shards"]:
        del entry["sha256"]  # a set from before checksums: the TFRecord CRC still catches the flipped byte
    json.dump(manifest, open(set_dir / "metadata.json", "w"))
    with pytest.raises(DataError, match=r"data-00000-of-00002\.tfrecord: corrupted record after 1 good ones \(corrupted record at \d+\)"):
        verify_set(str(set_dir))

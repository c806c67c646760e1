"""Converts a raw interaction file into a TFRecord set (vocab.json + shards).

Usage:
    python -m pipelines.convert --data Data/ml-100k.inter --output_dir tfrecords/ml-100k
    python -m pipelines.convert --data new.csv --vocab_from exports/pretrained --overwrite
    python -m pipelines.convert --verify --data tfrecords/ml-100k     # check an existing set
    python -m pipelines.convert --data big.inter --streaming          # out of core (automatic from 64 MiB)

``--verify`` checks a TFRecord set in full (the SHA-256 of every shard
against the manifest, every record's CRC, the record counts): the set given
as ``--data``, or the one just written.

``--output_dir`` defaults to ``<--tfrecord_dir>/<file stem>``. Errors in the
input are printed as one line (exit status 2) and nothing is written.
"""

from __future__ import annotations

import os

from absl import flags

from peterrec.data.convert import convert, source_stem
from peterrec.data.tfrecord import verify_set
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError
from pipelines.flags import FLAGS, define_data_flags, run

define_data_flags()
if "output_dir" not in FLAGS:
    flags.DEFINE_string("output_dir", None, "Directory of the TFRecord set (default: <--tfrecord_dir>/<file stem>).")
if "overwrite" not in FLAGS:
    flags.DEFINE_bool("overwrite", False, "Replace --output_dir if it exists and is not empty.")
flags.DEFINE_bool("streaming", None, "Convert out of core (chunked reading, users grouped through hash-partitioned temporary "
                  "files): --streaming forces it, --nostreaming forbids it; by default files of 64 MiB or more stream. "
                  "Both write the same set.")
flags.DEFINE_bool("verify", False, "Check a TFRecord set in full (checksums, record CRCs and counts): --data if it is a set, "
                  "else the set this run writes.")


def summary(metadata: dict, output_dir: str) -> str:
    """Returns a short human-readable summary of a conversion."""
    counts = metadata["counts"]
    roles = ", ".join(f"{name} {count}" for name, count in metadata["roles"].items() if count)
    lines = [
        f"wrote {output_dir}: {len(metadata['shards'])} shards, {counts['users_kept']} users ({roles}), "
        f"{counts['interactions']} interactions",
        f"  read {counts['lines_read']} lines, {counts['users_read']} users; skipped {counts['users_skipped_short']} short users, "
        f"removed {counts['rating_filtered']} below rating, {counts['duplicates_removed']} duplicates, "
        f"{counts['kcore_removed_interactions']} by k-core; {counts['oov_interactions']} OOV items",
        f"  vocab {metadata['vocab_size']} ids ({metadata['vocab_source']}), hash {metadata['vocab_hash'][:12]}",
    ]
    if metadata.get("target_vocab_hash"):
        lines.append(f"  target vocab {metadata['target_vocab_size']} ids, hash {metadata['target_vocab_hash'][:12]}")
    if metadata.get("streaming"):
        partitions = metadata["streaming"]["partitions"]
        lines.append(f"  streamed through {partitions} partition{'s' if partitions != 1 else ''} (out of core)")
    lines.extend(f"  note: {note}" for note in metadata["notes"])
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Reads the flags, converts --data and prints a summary."""
    if len(argv) > 1:
        raise ConfigError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if FLAGS.verify and os.path.isdir(FLAGS.data):
        print(verified(FLAGS.data))
        return
    vocab = Vocabulary.load(FLAGS.vocab_from) if FLAGS.vocab_from else None
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.tfrecord_dir, source_stem(FLAGS.data, FLAGS.format))
    metadata = convert(
        FLAGS.data,
        FLAGS.format,
        output_dir,
        vocab=vocab,
        num_shards=FLAGS.num_shards,
        split=FLAGS.split,
        valid_fraction=FLAGS.valid_fraction,
        test_fraction=FLAGS.test_fraction,
        seed=FLAGS.seed,
        min_seq_len=FLAGS.min_seq_len,
        k_core=FLAGS.k_core,
        dedup=FLAGS.dedup,
        rating_threshold=FLAGS.rating_threshold,
        targets=FLAGS.targets,
        overwrite=FLAGS.overwrite,
        max_skipped_share=FLAGS.max_skipped_share,
        streaming=FLAGS.streaming,
    )
    print(summary(metadata, output_dir))
    if FLAGS.verify:
        print(verified(output_dir))


def verified(set_dir: str) -> str:
    """Verifies a TFRecord set in full; returns a one-line report."""
    report = verify_set(set_dir)
    checksums = "SHA-256 checksums match" if report["checksums"] else "no checksums recorded (an older set)"
    return f"verified {set_dir}: {report['shards']} shards, {report['records']} records, {report['bytes']} bytes; {checksums}; all record CRCs valid"


if __name__ == "__main__":
    run(main)

"""The bad-input matrix (issue #9): every pipeline against malformed files, wrong artefacts, bad flags and
failing file systems. Each case asserts the exit status, the one ``error:`` line naming the file, line or
flag (or the correct result when the input must work), and that no partial output was left behind.

Every case is a real command line run through ``pipelines.flags.run`` (absl flag parsing, exit codes) in a
process of its own: one runner (a fork of the ``cli`` fixture's server, which imported TensorFlow once) forks a
child per case, so a case costs what it does, not a TensorFlow import. ``docs/reliability.md`` lists the same cases with their results.
"""

import dataclasses
import json
import os
import re

import pytest

from peterrec import export, finetuning, pretraining
from peterrec.data import convert, synthetic
from peterrec.data.vocab import Vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = r'''
import builtins, errno, importlib, io, json, os, resource, signal, sys, time, traceback
spec = json.load(open(sys.argv[1]))
import tensorflow, keras  # noqa: F401  (imported once: every case is a fork of this process)
import peterrec.pretraining, peterrec.finetuning, peterrec.evaluation, peterrec.inference, peterrec.patches  # noqa: F401
from pipelines import flags as common


def read_only(root):
    """Python-level writes under ``root`` fail with EROFS, as on a read-only mount (root ignores chmod)."""
    root = os.path.realpath(root)

    def blocked(path):
        try:
            real = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return real == root or real.startswith(root + os.sep)

    def wrap(fn, writes=lambda *a, **k: True):
        def guarded(path, *args, **kwargs):
            if blocked(path) and writes(*args, **kwargs):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return fn(path, *args, **kwargs)
        return guarded

    builtins.open = io.open = wrap(builtins.open, lambda mode="r", *a, **k: any(c in mode for c in "wax+"))
    os.open = wrap(os.open, lambda flags, *a, **k: bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
    for name in ("mkdir", "rename", "replace", "remove", "unlink", "rmdir"):
        setattr(os, name, wrap(getattr(os, name)))


def child(case):
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(os.path.join(case["out"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(case["cwd"])
    inject = case.get("inject") or {}
    if "fsize" in inject:  # a full disk: writes past this size fail with EFBIG (SIGXFSZ ignored)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (inject["fsize"], resource.RLIM_INFINITY))
    if "read_only" in inject:
        read_only(inject["read_only"])
    sys.argv = [f"pipelines/{case['job']}.py", *case["argv"]]
    code = 0
    try:
        common.run(importlib.import_module(f"pipelines.{case['job']}").main)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


pending, running, results = list(spec["cases"]), {}, {}
while pending or running:
    while pending and len(running) < spec["workers"]:
        case = pending.pop(0)
        pid = os.fork()
        if pid == 0:
            child(case)
        running[pid] = (case, time.monotonic())
    for pid, (case, start) in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done and time.monotonic() - start > spec["timeout"]:
            os.kill(pid, signal.SIGKILL)
            done, status = os.waitpid(pid, 0)
        if done:
            del running[pid]
            results[case["id"]] = {"code": os.waitstatus_to_exitcode(status), "seconds": round(time.monotonic() - start, 2)}
    time.sleep(0.02)
json.dump(results, open(spec["results"], "w"), indent=1)
'''


@dataclasses.dataclass
class Case:
    """One command line: ``argv`` may name ``{case}`` (its own directory) and the fixture's paths."""

    id: str
    job: str
    argv: list
    code: int
    error: str | None = None  # regex the last stderr line must match (after "error: ")
    files: dict = dataclasses.field(default_factory=dict)  # inputs written into {case}: name -> bytes or fn(paths) -> bytes
    inject: dict | None = None
    check: object = None  # fn(paths, result) for extra assertions
    output: str | None = None  # a path (relative to {case}) that must not exist after a failure
    doc: str = ""  # the case in words, for docs/reliability.md


HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def _source(paths):
    return open(paths["world"] + "/source.inter", "rb").read()


def _spaced_bom_crlf(paths):
    header, *rows = _source(paths).decode().splitlines(keepends=True)
    rows = [re.sub(r"^u(\d+)\ti(\d+)\t", r"user \1\titem \2\t", row) for row in rows]
    return b"\xef\xbb\xbf" + (header + "".join(rows)).replace("\n", "\r\n").encode()


def _short_users(num_short, num_long):
    rows = [f"s{u}\tx{u}\t1\n" for u in range(num_short)]
    rows += [f"l{u}\tx{k}\t{k}\n" for u in range(num_long) for k in range(5)]
    return (HEADER + "".join(rows)).encode()


def _long_user(paths):
    rows = [f"whale\tx{k % 97}\t{k}\n" for k in range(100_000)]
    rows += [f"u{u}\tx{(u + k) % 97}\t{k}\n" for u in range(20) for k in range(6)]
    return (HEADER + "".join(rows)).encode()


def _edited_vocab(paths):
    data = json.load(open(paths["set"] + "/vocab.json"))
    data["tokens"][0], data["tokens"][1] = data["tokens"][1], data["tokens"][0]  # swap two ids by hand
    return json.dumps(data).encode()


def _targets(paths, unseen_every):
    lines = open(paths["world"] + "/target.inter").read().splitlines(keepends=True)
    return (lines[0] + "".join(f"{line.split(chr(9))[0]}\tnew-{n}\t1\n" if n % unseen_every == 0 else line
                               for n, line in enumerate(lines[1:]))).encode()


def _copy_set(paths, case_dir, damage):
    """A copy of the fixture's TFRecord set in ``{case}/set`` with ``damage(set_dir)`` applied."""
    import shutil

    target = os.path.join(case_dir, "set")
    shutil.copytree(paths["set"], target)
    damage(target)


def _truncate(set_dir):
    shard = os.path.join(set_dir, "data-00001-of-00002.tfrecord")
    os.truncate(shard, os.path.getsize(shard) - 7)


def _flip_byte(set_dir, forget_checksums=False):
    shard = os.path.join(set_dir, "data-00000-of-00002.tfrecord")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    if forget_checksums:  # a set written before the manifest held checksums: the record CRCs still catch it
        path = os.path.join(set_dir, "metadata.json")
        metadata = json.load(open(path))
        for shard_entry in metadata["shards"]:
            shard_entry.pop("sha256")
        json.dump(metadata, open(path, "w"))


def _edit_export_vocab(paths, case_dir):
    import shutil

    target = os.path.join(case_dir, "export")
    shutil.copytree(paths["pre_export"], os.path.join(target, "1"))
    path = os.path.join(target, "1", "vocab.json")
    data = json.load(open(path))
    data["tokens"] = data["tokens"][::-1]
    json.dump(data, open(path, "w"))


def _metadata(case_dir, name="out"):
    return json.load(open(os.path.join(case_dir, name, "metadata.json")))


def _check_same_vocab_as_plain(paths, result):
    metadata = _metadata(result["dir"])
    assert metadata["vocab_hash"] == paths["vocab_hash"]  # BOM and \r stripped: the same tokens as the clean file
    assert metadata["counts"] == paths["counts"]


def _check_spaced_ids(paths, result):
    vocab = Vocabulary.load(os.path.join(result["dir"], "out"))
    assert "item 00005" in vocab and all(" " in t for t in vocab.tokens)
    assert _metadata(result["dir"])["counts"]["users_kept"] == paths["counts"]["users_kept"]


def _check_verified(paths, result):
    pattern = r"verified .*: 2 shards, \d+ records, \d+ bytes; SHA-256 checksums match; all record CRCs valid"
    assert re.search(pattern, result["stdout"]), result["stdout"][-2000:]


def _check_short_counted(paths, result):
    assert _metadata(result["dir"])["counts"]["users_skipped_short"] == 4
    assert "skipped 4 short users" in result["stdout"]


def _check_long_user(paths, result):
    metadata = _metadata(result["dir"])
    assert metadata["length_histogram"]["loo"]["100000"] == 1 and metadata["counts"]["users_kept"] == 21


def _check_pretrained_spaced(paths, result):
    loaded = export.load_export(os.path.join(result["dir"], "run"))
    assert "item 00005" in loaded.vocab and loaded.recommend([["item 00005", "item 00142"]], top_k=3)[0]


def _check_unseen_counted(paths, result):
    metrics = json.load(open(os.path.join(result["dir"], "metrics.json")))
    unknown = metrics["unknown_targets"]
    assert 0 < unknown < metrics["test"]["users"]
    assert re.search(rf"{unknown} of {metrics['test']['users']} test targets are unknown to the model's vocabulary", result["stderr"])


def _tree(case_dir):
    return {os.path.relpath(os.path.join(parent, name), case_dir) for parent, dirs, files in os.walk(case_dir) for name in dirs + files}


def _no_partial_output(case_dir, output, inputs):
    """No half-written artefact anywhere under the case directory (its inputs aside), and nothing at ``output``."""
    if output:
        assert not os.path.exists(os.path.join(case_dir, output)), output
    for path in _tree(case_dir) - inputs:
        parent, name = os.path.split(path)
        assert not (name.startswith(".tmp") or ".tmp-" in name or name.endswith("_temp") or "tempstate" in name), path
        assert not (os.path.basename(parent) in ("export", "patch") and name.isdigit()), f"an export version was written: {path}"


TINY = ["--epochs", "1", "--embedding_dim", "8", "--dilations", "1,2", "--max_len", "20", "--batch_size", "32", "--verbose", "0",
        "--num_shards", "2", "--tfrecord_dir", "{case}/tfr"]
FINE = ["--pretrained", "{pre_export}", "--data", "{world}/source.inter", "--targets", "{world}/target.inter", "--epochs", "1",
        "--verbose", "0", "--num_shards", "2", "--tfrecord_dir", "{case}/tfr", "--model_dir", "{case}/run"]
OUT = ["--output_dir", "{case}/out", "--num_shards", "2"]

CASES = [
    # ---------------------------------------------------------------- convert: malformed files
    Case("convert-empty-file", "convert", ["--data", "{case}/x.inter", *OUT], 2, r"{case}/x\.inter: empty file", {"x.inter": b""},
         output="out", doc="an empty .inter file"),
    Case("convert-header-only", "convert", ["--data", "{case}/x.inter", *OUT], 2, r"{case}/x\.inter: header only, no interactions",
         {"x.inter": HEADER.encode()}, output="out", doc="a header line and no interactions"),
    Case("convert-wrong-separator", "convert", ["--data", "{case}/x.inter", *OUT], 2,
         r"{case}/x\.inter:1: header .* lacks the column\(s\) item_id .*; it has a single column: RecBole files are tab-separated",
         {"x.inter": b"user_id:token,item_id:token\nu1,i1\n"}, output="out", doc="a comma-separated .inter file"),
    Case("convert-missing-column", "convert", ["--data", "{case}/x.inter", *OUT], 2,
         r"{case}/x\.inter:1: header 'user_id:token\\ttimestamp:float' lacks the column\(s\) item_id",
         {"x.inter": b"user_id:token\ttimestamp:float\nu1\t1\n"}, output="out", doc="the item_id column is missing"),
    Case("convert-non-numeric-timestamp", "convert", ["--data", "{case}/x.inter", *OUT], 2,
         r"{case}/x\.inter:3: column 'timestamp' must be a finite number, got 'yesterday'",
         {"x.inter": (HEADER + "u1\ti1\t1\nu1\ti2\tyesterday\n").encode()}, output="out", doc="a timestamp that is not a number"),
    Case("convert-duplicate-column", "convert", ["--data", "{case}/x.inter", *OUT], 2, r"{case}/x\.inter:1: duplicate column 'item_id'",
         {"x.inter": b"user_id:token\titem_id:token\titem_id:float\nu1\ti1\t1\n"}, output="out", doc="a header naming item_id twice"),
    Case("convert-repeated-header", "convert", ["--data", "{case}/x.inter", *OUT], 2,
         r"{case}/x\.inter:4: repeats the header of line 1 \(were two files concatenated\?\)",
         {"x.inter": (HEADER + "u1\ti1\t1\nu1\ti2\t2\n" + HEADER + "u2\ti1\t3\n").encode()}, output="out",
         doc="two files concatenated with their headers"),
    Case("convert-non-utf8", "convert", ["--data", "{case}/x.inter", *OUT], 2, r"{case}/x\.inter:3: not valid UTF-8 \(byte 4: b'\\xff'\)",
         {"x.inter": HEADER.encode() + b"u1\ti1\t1\nu1\ti\xff\xfe\t2\n"}, output="out", doc="Latin-1 bytes in a UTF-8 file"),
    Case("convert-missing-file", "convert", ["--data", "{case}/absent.inter", *OUT], 2, r"{case}/absent\.inter: no such file",
         output="out", doc="--data names no file"),
    # ---------------------------------------------------------------- convert: inputs that must work
    Case("convert-bom-crlf", "convert", ["--data", "{case}/x.inter", *OUT], 0, None,
         {"x.inter": lambda p: b"\xef\xbb\xbf" + _source(p).replace(b"\n", b"\r\n")}, check=_check_same_vocab_as_plain,
         doc="a UTF-8 byte order mark and CRLF line endings"),
    Case("convert-ids-with-spaces", "convert", ["--data", "{case}/x.inter", *OUT], 0, None, {"x.inter": _spaced_bom_crlf},
         check=_check_spaced_ids, doc="user and item ids with spaces in a tab-separated file (+ BOM, CRLF)"),
    Case("convert-one-interaction-users-counted", "convert", ["--data", "{case}/x.inter", *OUT], 0, None,
         {"x.inter": _short_users(4, 6)}, check=_check_short_counted, doc="4 of 10 users have one interaction: skipped and counted"),
    Case("convert-one-interaction-users-share", "convert", ["--data", "{case}/x.inter", *OUT], 2,
         r"{case}/x\.inter: 6 of 10 users \(60\.0%\) have fewer than 3 interactions and would be skipped, more than "
         r"--max_skipped_share 0\.5", {"x.inter": _short_users(6, 4)}, output="out",
         doc="6 of 10 users have one interaction (more than --max_skipped_share 0.5)"),
    Case("convert-one-interaction-users-threshold-flag", "convert", ["--data", "{case}/x.inter", *OUT, "--max_skipped_share", "0.7"],
         0, None, {"x.inter": _short_users(6, 4)}, doc="the same file with --max_skipped_share 0.7 converts"),
    Case("convert-user-with-100000-interactions", "convert", ["--data", "{case}/x.inter", *OUT], 0, None, {"x.inter": _long_user},
         check=_check_long_user, doc="one user with 100,000 interactions"),
    # ---------------------------------------------------------------- convert: artefacts, flags, file systems
    Case("convert-hand-edited-vocab", "convert", ["--data", "{world}/source.inter", "--vocab_from", "{case}/vocab.json", *OUT], 2,
         r"{case}/vocab\.json: vocabulary hash mismatch .*edited by hand", {"vocab.json": _edited_vocab}, output="out",
         doc="--vocab_from a vocab.json whose ids were swapped by hand"),
    Case("convert-output-not-empty", "convert", ["--data", "{world}/source.inter", *OUT], 2,
         r"{case}/out: directory exists and is not empty", {"out/keep.txt": b"mine"}, doc="--output_dir holds other files"),
    Case("convert-read-only-output", "convert", ["--data", "{world}/source.inter", "--output_dir", "{case}/ro/set"], 2,
         r"{case}/ro/\.set\.tmp-\w+: Read-only file system", {"ro/.keep": b""}, inject={"read_only": "{case}/ro"}, output="ro/set",
         doc="--output_dir on a read-only file system (EROFS injected)"),
    Case("convert-full-disk", "convert", ["--data", "{case}/x.inter", *OUT], 2,
         r"{case}/\.out\.tmp-\w+/data-0000\d-of-00002\.tfrecord: File too large", {"x.inter": _long_user}, inject={"fsize": 65536},
         output="out", doc="the disk fills while shards are written (RLIMIT_FSIZE, EFBIG)"),
    Case("convert-unknown-format", "convert", ["--data", "{world}/source.inter", "--format", "xml", *OUT], 1,
         r"FATAL Flags parsing error: flag --format=xml: value should be one of", output="out", doc="--format xml"),
    Case("convert-zero-shards", "convert", ["--data", "{world}/source.inter", "--output_dir", "{case}/out", "--num_shards", "0"], 1,
         r"FATAL Flags parsing error: flag --num_shards=0: .*", output="out", doc="--num_shards 0"),
    Case("convert-negative-min-seq-len", "convert", ["--data", "{world}/source.inter", *OUT, "--min_seq_len", "-1"], 1,
         r"FATAL Flags parsing error: flag --min_seq_len=-1: .*", output="out", doc="--min_seq_len -1"),
    # ---------------------------------------------------------------- convert --verify
    Case("convert-verify", "convert", ["--verify", "--data", "{set}"], 0, None,
         check=_check_verified, doc="convert --verify of an intact set"),
    Case("convert-verify-truncated-shard", "convert", ["--verify", "--data", "{case}/set"], 2,
         r"{case}/set/data-00001-of-00002\.tfrecord: shard has \d+ bytes, metadata\.json records \d+ \(truncated or modified\)",
         files={"set": lambda p, d: _copy_set(p, d, _truncate)}, doc="a shard cut short by 7 bytes"),
    Case("convert-verify-corrupted-shard", "convert", ["--verify", "--data", "{case}/set"], 2,
         r"{case}/set/data-00000-of-00002\.tfrecord: SHA-256 differs from metadata\.json",
         files={"set": lambda p, d: _copy_set(p, d, _flip_byte)}, doc="one byte of a shard flipped (same size)"),
    Case("convert-verify-corrupted-record", "convert", ["--verify", "--data", "{case}/set"], 2,
         r"{case}/set/data-00000-of-00002\.tfrecord: corrupted record after \d+ good ones",
         files={"set": lambda p, d: _copy_set(p, d, lambda s: _flip_byte(s, forget_checksums=True))},
         doc="a flipped byte in a set without checksums (TFRecord CRC)"),
    # ---------------------------------------------------------------- pretrain
    Case("pretrain-truncated-tfrecord", "pretrain", ["--data", "{case}/set", *TINY, "--model_dir", "{case}/run"], 2,
         r"{case}/set/data-00001-of-00002\.tfrecord: shard has \d+ bytes, metadata\.json records \d+ \(truncated or modified\)",
         files={"set": lambda p, d: _copy_set(p, d, _truncate)}, output="run", doc="--data a TFRecord set with a truncated shard"),
    Case("pretrain-bom-crlf-spaced-ids", "pretrain", ["--data", "{case}/x.inter", *TINY, "--model_dir", "{case}/run"], 0, None,
         {"x.inter": _spaced_bom_crlf}, check=_check_pretrained_spaced,
         doc="BOM, CRLF and ids with spaces train and serve end to end"),
    Case("pretrain-max-len-1", "pretrain", ["--data", "{set}", *TINY, "--max_len", "1", "--model_dir", "{case}/run"], 2,
         r"--max_len: must be >= 2", output="run", doc="--max_len 1"),
    Case("pretrain-zero-epochs", "pretrain", ["--data", "{set}", *TINY, "--epochs", "0", "--model_dir", "{case}/run"], 1,
         r"FATAL Flags parsing error: flag --epochs=0: .*", output="run", doc="--epochs 0"),
    Case("pretrain-negative-batch-size", "pretrain", ["--data", "{set}", *TINY, "--batch_size", "-8", "--model_dir", "{case}/run"], 1,
         r"FATAL Flags parsing error: flag --batch_size=-8: .*", output="run", doc="--batch_size -8"),
    Case("pretrain-zero-learning-rate", "pretrain", ["--data", "{set}", *TINY, "--learning_rate", "0", "--model_dir", "{case}/run"], 2,
         r"--learning_rate: must be > 0, got 0\.0", output="run", doc="--learning_rate 0"),
    Case("pretrain-stride-above-max-len", "pretrain", ["--data", "{set}", *TINY, "--stride", "40", "--model_dir", "{case}/run"], 2,
         r"--stride: must be in \[1, max_len=20\], got 40", output="run", doc="--stride 40 with --max_len 20"),
    Case("pretrain-unknown-backbone", "pretrain", ["--data", "{set}", *TINY, "--backbone", "bert", "--model_dir", "{case}/run"], 1,
         r"FATAL Flags parsing error: flag --backbone=bert: value should be one of", output="run", doc="--backbone bert"),
    Case("pretrain-hand-edited-vocab", "pretrain", ["--data", "{world}/source.inter", "--vocab_from", "{case}/vocab.json", *TINY,
                                                    "--model_dir", "{case}/run"], 2,
         r"{case}/vocab\.json: vocabulary hash mismatch .*edited by hand", {"vocab.json": _edited_vocab}, output="run",
         doc="--vocab_from a vocabulary edited by hand"),
    Case("pretrain-one-interaction-users-share", "pretrain", ["--data", "{case}/x.inter", *TINY, "--model_dir", "{case}/run"], 2,
         r"{case}/x\.inter: 6 of 10 users \(60\.0%\) have fewer than 3 interactions", {"x.inter": _short_users(6, 4)}, output="run",
         doc="mostly one-interaction users (the --max_skipped_share threshold reaches training jobs)"),
    Case("pretrain-read-only-model-dir", "pretrain", ["--data", "{set}", *TINY, "--model_dir", "{case}/ro/run"], 2,
         r"{case}/ro/run: Read-only file system", {"ro/.keep": b""}, inject={"read_only": "{case}/ro"}, output="ro/run",
         doc="--model_dir on a read-only file system (EROFS injected)"),
    Case("pretrain-full-disk", "pretrain", ["--data", "{set}", *TINY, "--checkpoint_every_steps", "2", "--model_dir", "{case}/run"], 2,
         r"{case}/run/\S+: File too large", inject={"fsize": 24576}, doc="the disk fills during training (RLIMIT_FSIZE, EFBIG)"),
    Case("pretrain-diverging-learning-rate", "pretrain", ["--data", "{set}", *TINY, "--learning_rate", "1e6", "--model_dir", "{case}/run"],
         2, r"(the (loss|weights) became NaN/Inf|the training loss diverged) at global step \d+.* with learning rate 1e\+06; "
            r"training stopped\. Last good checkpoint: .*Lower --learning_rate", doc="--learning_rate 1e6 (NaN/Inf or a diverging loss)"),
    # ---------------------------------------------------------------- finetune
    Case("finetune-csv-without-separator", "finetune", [*FINE[:2], "--data", "{case}/x.csv", *FINE[6:]], 2,
         r"{case}/x\.csv: no finetuning targets \(give --targets, or a PeterRec 'source,,targets' CSV\)",
         {"x.csv": b"i00001,i00002,i00003\ni00004,i00005,i00006\ni00007,i00008,i00009\n"}, output="run/export",
         doc="a PeterRec finetune CSV without the ',,' separator"),
    Case("finetune-one-class", "finetune", [*FINE[:4], "--targets", "{case}/one.inter", "--task", "classify", *FINE[6:]], 2,
         r"{case}/one\.inter: --task classify needs at least 2 classes, found 1",
         {"one.inter": lambda p: (b"user_id:token\tlabel:token\n" + b"".join(b"u%04d\tc0\n" % u for u in range(1, 301)))},
         output="run/export", doc="a classification file with one class"),
    Case("finetune-export-of-another-backbone", "finetune", ["--pretrained", "{other_export}", *FINE[2:]], 2,
         r"--pretrained .*: backbone '\w+' cannot be patched \(NextItNet/GRec only\)", output="run",
         doc="--pretrained an export of a zoo backbone"),
    Case("finetune-finetuned-export-as-pretrained", "finetune", ["--pretrained", "{fine_export}", *FINE[2:]], 2,
         r"--pretrained .*: .* is a finetuned model; pass the pretraining export instead", output="run",
         doc="--pretrained a finetuned export"),
    Case("finetune-max-len-2", "finetune", [*FINE, "--max_len", "2"], 2, r"--max_len: must be >= 3, got 2", output="run",
         doc="--max_len 2 (a separator needs room)"),
    Case("finetune-unknown-insertion", "finetune", [*FINE, "--insertion", "diagonal"], 1,
         r"FATAL Flags parsing error: flag --insertion=diagonal: value should be one of", output="run", doc="--insertion diagonal"),
    Case("finetune-targets-without-columns", "finetune", [*FINE[:4], "--targets", "{case}/t.inter", *FINE[6:]], 2,
         r"{case}/t\.inter:1: header 'user_id:token\\tscore:float' lacks the column\(s\) label",
         {"t.inter": b"user_id:token\tscore:float\nu0001\t3\n"}, output="run", doc="a targets file with neither item_id nor label"),
    # ---------------------------------------------------------------- evaluate
    Case("evaluate-unseen-targets", "evaluate", ["--model_dir", "{fine}", "--data", "{world}/source.inter", "--targets", "{case}/t.inter",
                                                 "--tfrecord_dir", "{case}/tfr", "--output", "{case}/metrics.json"], 0, None,
         {"t.inter": lambda p: _targets(p, 3)}, check=_check_unseen_counted,
         doc="target ids unseen at training time: counted, reported, ranked last"),
    Case("evaluate-only-unseen-targets", "evaluate", ["--model_dir", "{fine}", "--data", "{world}/source.inter", "--targets",
                                                      "{case}/t.inter", "--tfrecord_dir", "{case}/tfr", "--output", "{case}/m.json"], 2,
         r"{case}/t\.inter: none of the \d+ test targets is known to .*'s vocabulary", {"t.inter": lambda p: _targets(p, 1)},
         output="m.json", doc="every target id unseen at training time"),
    Case("evaluate-not-an-export", "evaluate", ["--model_dir", "{case}", "--output", "{case}/m.json"], 2,
         r"{case} is not an export directory", output="m.json", doc="--model_dir without an export"),
    Case("evaluate-hand-edited-export-vocab", "evaluate", ["--model_dir", "{case}/export", "--output", "{case}/m.json"], 2,
         r"{case}/export/1/vocab\.json: vocabulary hash mismatch .*edited by hand", files={"export": _edit_export_vocab},
         output="m.json", doc="an export whose vocab.json was edited by hand"),
    # ---------------------------------------------------------------- predict
    Case("predict-patch-for-another-backbone", "predict", ["--export", "{other_export}", "--patches", "{fine}/patch", "--data",
                                                           "{world}/source.inter", "--output", "{case}/p.csv"], 2,
         r"{fine}/patch/1 was trained on another backbone", output="predictions-0.csv", doc="a patch artifact applied to another backbone"),
    Case("predict-top-k-above-export", "predict", ["--export", "{pre_export}", "--data", "{world}/source.inter", "--top_k", "500",
                                                   "--output", "{case}/p.csv"], 2,
         r"--top_k 500 is larger than the \d+ items the export serves", output="p.csv", doc="--top_k above what the export serves"),
    Case("predict-empty-data", "predict", ["--export", "{pre_export}", "--data", "{case}/x.inter", "--output", "{case}/p.csv"], 2,
         r"{case}/x\.inter: empty file", {"x.inter": b""}, output="p.csv", doc="an empty --data file"),
    # ---------------------------------------------------------------- serve and train
    Case("serve-not-an-export", "serve", ["--export", "{case}", "--port", "0"], 2, r"{case} is not an export directory",
         doc="--export without an export"),
    Case("serve-hand-edited-export-vocab", "serve", ["--export", "{case}/export", "--port", "0"], 2,
         r"{case}/export/1/vocab\.json: vocabulary hash mismatch .*edited by hand", files={"export": _edit_export_vocab},
         doc="an export whose vocab.json was edited by hand"),
    Case("serve-port-out-of-range", "serve", ["--export", "{pre_export}", "--port", "-1"], 1,
         r"FATAL Flags parsing error: flag --port=-1: .*", doc="--port -1"),
    Case("train-unknown-model", "train", ["--model", "bert", "--data", "{set}", "--model_dir", "{case}/run"], 2,
         r"--model: 'bert' is not one of", output="run", doc="--model bert"),
    Case("train-max-len-1", "train", ["--model", "sasrec", "--data", "{set}", "--max_len", "1", "--model_dir", "{case}/run"], 2,
         r"--max_len: must be >= \d", output="run", doc="--max_len 1"),
]


def _fill(text, paths):
    return re.sub(r"\{(\w+)\}", lambda m: paths[m.group(1)], text)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, cli):
    """Builds the shared artefacts and every case's inputs, runs all cases, returns ``(paths, results)``."""
    root = tmp_path_factory.mktemp("bad_input")
    world = root / "world"
    synthetic.generate(str(world), seed=5, n_users=300, n_items=200, n_target_items=100, length_median=20.0)
    paths = {"root": str(root), "world": str(world), "set": str(root / "set")}
    metadata = convert.convert(str(world / "source.inter"), "auto", paths["set"], num_shards=2)
    paths.update(vocab_hash=metadata["vocab_hash"], counts=metadata["counts"])
    tiny = dict(epochs=1, embedding_dim=8, dilations=(1, 2), max_len=20, batch_size=32, verbose=0, num_shards=2)
    pre = pretraining.run(pretraining.PretrainConfig(data=paths["set"], model_dir=str(root / "pre"), **tiny))
    fine = finetuning.run(finetuning.FinetuneConfig(pretrained=pre["export_dir"], data=str(world / "source.inter"),
                                                    targets=str(world / "target.inter"), tfrecord_dir=str(root / "tfr"),
                                                    model_dir=str(root / "fine"), epochs=1, verbose=0, num_shards=2))
    other = pretraining.run(pretraining.PretrainConfig(data=paths["set"], model_dir=str(root / "other"), backbone="stamp",
                                                       **{k: v for k, v in tiny.items() if k != "dilations"}))
    paths.update(pre_export=pre["export_dir"], fine=str(root / "fine"), fine_export=fine["export_dir"], other_export=other["export_dir"])
    cases = []
    for case in CASES:
        case_dir = root / "cases" / case.id
        case_dir.mkdir(parents=True)
        here = dict(paths, case=str(case_dir))
        for name, content in case.files.items():
            if callable(content) and content.__code__.co_argcount == 2:
                content(paths, str(case_dir))
                continue
            (case_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (case_dir / name).write_bytes(content(paths) if callable(content) else content)
        out = root / "out" / case.id
        out.mkdir(parents=True)
        (out / "inputs.json").write_text(json.dumps(sorted(_tree(case_dir))))
        inject = {k: _fill(v, here) if isinstance(v, str) else v for k, v in (case.inject or {}).items()}
        cases.append({"id": case.id, "job": case.job, "argv": [_fill(a, here) for a in case.argv], "cwd": str(case_dir),
                      "out": str(out), "inject": inject})
    spec = {"cases": cases, "workers": 2, "timeout": 240, "results": str(root / "results.json")}
    (root / "spec.json").write_text(json.dumps(spec))
    # The runner is itself a fork of the command-line server (TensorFlow imported already); it forks a child per case.
    done = cli.code(RUNNER, [str(root / "spec.json")], cwd=REPO, env={"TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(root / "results.json"))
    for case in cases:
        result = results[case["id"]]
        result.update(dir=case["cwd"], stdout=open(os.path.join(case["out"], "stdout")).read(),
                      stderr=open(os.path.join(case["out"], "stderr")).read(),
                      inputs=json.load(open(os.path.join(case["out"], "inputs.json"))))
    (root / "observed.json").write_text(json.dumps(results, indent=1))
    return paths, results


def test_the_matrix_is_large_enough():
    jobs = {case.job for case in CASES}
    assert len(CASES) >= 25 and {"convert", "pretrain", "finetune", "evaluate", "predict", "serve", "train"} <= jobs
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(matrix, case):
    paths, results = matrix
    result = results[case.id]
    here = dict(paths, case=result["dir"])
    stderr = result["stderr"]
    assert result["code"] == case.code, f"exit {result['code']}, expected {case.code}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    if case.error is not None:
        lines = [line for line in stderr.strip().splitlines() if line.startswith(("error: ", "FATAL Flags parsing error"))]
        assert lines, stderr[-3000:]
        pattern = _fill(case.error, {k: re.escape(v) if isinstance(v, str) else v for k, v in here.items()})
        assert re.search(pattern, lines[-1]), (pattern, lines[-1])
    if case.code != 0:
        _no_partial_output(result["dir"], case.output, set(result["inputs"]))
    if case.check is not None:
        assert case.check(paths, result) is None, f"{case.id}: a check asserts; it must not return a value to be judged"


def test_docs_list_every_case():
    text = open(os.path.join(REPO, "docs", "reliability.md"), encoding="utf-8").read()
    missing = [case.id for case in CASES if f"| `{case.id}` |" not in text]
    assert not missing, f"add these cases to the matrix in docs/reliability.md: {missing}"

"""How long the default test suite takes, file by file (issue #16: CI under 8 minutes on the 2-core machine).

    python -m benchmarks.test_suite            # runs `python -m pytest --durations=0`, writes test_suite.md / .json
    python -m benchmarks.test_suite --log LOG  # tables from the output of such a run instead

The wall time is the run's own; a file's seconds are the sum of its tests' setup, call and teardown times (under
pytest-xdist the files of both workers overlap, so the sum exceeds the wall time about twofold).
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

from benchmarks.protocol import RESULTS, write_markdown

DURATION = re.compile(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(\S+?)::")
SUMMARY = re.compile(r"(\d+) passed(?:, (\d+) skipped)?.* in ([\d.]+)s")


def parse(text):
    """``{file: seconds}``, ``(passed, skipped, wall seconds)`` of a ``pytest --durations=0`` output."""
    per_file = collections.Counter()
    for line in text.splitlines():
        match = DURATION.match(line)
        if match:
            per_file[match.group(2)] += float(match.group(1))
    summary = SUMMARY.search(text)
    if summary is None:
        raise SystemExit("error: no 'N passed ... in S s' line in the pytest output (did the run finish?)")
    passed, skipped, wall = int(summary.group(1)), int(summary.group(2) or 0), float(summary.group(3))
    return dict(per_file), (passed, skipped, wall)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", help="the output of a finished `python -m pytest --durations=0` run (default: run one now)")
    parser.add_argument("--top", type=int, default=20, help="files in the table")
    args = parser.parse_args()
    if args.log:
        text = open(args.log, encoding="utf-8").read()
    else:
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "pytest", "--durations=0"], capture_output=True, text=True)
        text = done.stdout + done.stderr
        if done.returncode != 0:
            raise SystemExit(f"error: the suite failed (exit {done.returncode}) after {time.time() - started:.0f} s:\n{text[-3000:]}")
    per_file, (passed, skipped, wall) = parse(text)
    total = sum(per_file.values())
    lines = [
        "# Default test suite: time by file",
        "",
        f"`python -m pytest` (2 pytest-xdist workers): **{wall:.0f} s wall**, {passed} passed, {skipped} skipped; "
        f"the files' test times add up to {total:.0f} s. Reproduce: `python -m benchmarks.test_suite`.",
        "",
        "| file | seconds | share |",
        "|---|---|---|",
        *(f"| `{name}` | {seconds:.1f} | {seconds / total:.0%} |" for name, seconds in sorted(per_file.items(), key=lambda kv: -kv[1])[: args.top]),
    ]
    print(write_markdown(lines, "test_suite", echo=True))
    with open(os.path.join(RESULTS, "test_suite.json"), "w") as f:
        json.dump({"wall_seconds": wall, "passed": passed, "skipped": skipped, "per_file_seconds": per_file}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

"""Benchmark: wall time and test HR@10 of the CASR, ATRank and MIIR commands (issue #18), at two revisions.

    python benchmarks/seed_speed.py [--revs f52f8ac,HEAD] [--work_dir /tmp/seed-speed] [--timeout 900]
                                    [--only casr-heuristic,atrank] [--zero_flag]

Each revision is checked out into ``<work_dir>/<rev>/repo`` (``git worktree``) and
every command runs there as a user would type it (``python -m pipelines...``,
on the embedded default data, the job's outputs under ``<work_dir>/<rev>/``),
one after the other, nothing else running. A command that has not finished
after ``--timeout`` seconds is stopped and reported as "> timeout". Finished
commands are reused from ``<work_dir>/<rev>/runs.json`` (delete it to re-time; an entry
copied there from another revision carries ``"timed_at": "<commit>"``, shown in the table).
``--zero_flag`` also times the commands without flags (the defaults a new user
gets) at the last revision. Writes benchmarks/results/seed_speed.{md,json}:
seconds per command and revision, the speed-up, and test HR@10 next to
popularity's on the same rows.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.protocol import RESULTS, write_markdown  # noqa: E402

# name -> (module, flags); {dir} is the revision's work directory
COMMANDS = {
    "casr-heuristic": ("pipelines.casr", "--sampler_model narm --anchor_model stamp --learning heuristic --epochs 2 --model_dir {dir}/casr-heuristic"),
    "casr-learning": ("pipelines.casr", "--sampler_model narm --anchor_model stamp --learning learning --epochs 2 --model_dir {dir}/casr-learning"),
    "casr-ad": ("pipelines.casr", "--sampler_model narm --anchor_model stamp --learning ad --epochs 2 --model_dir {dir}/casr-ad"),
    "atrank": ("pipelines.train", "--model atrank --epochs 2 --model_dir {dir}/atrank"),
    "miir-pretrain": ("pipelines.pretrain", "--backbone miir --epochs 2 --model_dir {dir}/miir-pretrain"),
    "miir": ("pipelines.train", "--model miir --pretrained {dir}/miir-pretrain/export --epochs 2 --model_dir {dir}/miir"),
}
ZERO_FLAG = {
    "zero: casr": ("pipelines.casr", "--model_dir {dir}/zero-casr"),
    "zero: atrank": ("pipelines.train", "--model atrank --model_dir {dir}/zero-atrank"),
    "zero: miir pretrain": ("pipelines.pretrain", "--backbone miir --model_dir {dir}/zero-miir-pretrain"),
    "zero: miir": ("pipelines.train", "--model miir --pretrained {dir}/zero-miir-pretrain/export --model_dir {dir}/zero-miir"),
}


def checkout(rev, work_dir):
    """A worktree of ``rev`` (resolved to its commit) under work_dir; returns (commit, path)."""
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], check=True, capture_output=True, text=True).stdout.strip()
    path = os.path.join(work_dir, commit, "repo")
    if not os.path.exists(path):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, commit], check=True, capture_output=True)
    return commit, path


def metrics_of(model_dir):
    path = os.path.join(model_dir, "metrics.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        m = json.load(f)
    test, pop = m.get("test", {}), m.get("popularity", {}).get("test", {})
    return {"test_hr@10": test.get("hr@10"), "test_auc": test.get("auc"), "popularity_hr@10": pop.get("hr@10")}


def time_command(repo, run_dir, module, flags, timeout):
    flags = flags.format(dir=run_dir)
    model_dir = flags.split("--model_dir ")[1].split()[0]
    shutil.rmtree(model_dir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="2")
    log = open(model_dir + ".log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", module, *flags.split()], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    seconds = round(time.perf_counter() - t0, 1)
    log.close()
    return {"command": f"python -m {module} {flags}", "seconds": seconds, "finished": rc == 0, "rc": rc, **metrics_of(model_dir)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--revs", default="f52f8ac,HEAD")
    parser.add_argument("--work_dir", default="/tmp/seed-speed")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--only", default=None, help="comma-separated command names (default: all)")
    parser.add_argument("--zero_flag", action="store_true")
    parser.add_argument("--name", default="seed_speed")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(COMMANDS)
    revisions = []
    for rev in args.revs.split(","):
        commit, repo = checkout(rev, args.work_dir)
        run_dir = os.path.dirname(repo)
        runs_path = os.path.join(run_dir, "runs.json")
        runs = json.load(open(runs_path)) if os.path.exists(runs_path) else {}
        todo = {n: COMMANDS[n] for n in names}
        if args.zero_flag and rev == args.revs.split(",")[-1]:
            todo.update(ZERO_FLAG)
        for name, (module, flags) in todo.items():
            if name not in runs:
                print(f"{commit}: {name} ...", flush=True)
                runs[name] = time_command(repo, run_dir, module, flags, args.timeout)
                print(f"{commit}: {name}: {runs[name]}", flush=True)
                with open(runs_path, "w") as f:
                    json.dump(runs, f, indent=2)
        revisions.append({"rev": rev, "commit": commit, "runs": runs})
    write_results(args, revisions)
    return 0


def _cell(run):
    if run is None:
        return "—"
    # a stopped run reports the time it had when stopped (the --timeout of the run that timed it); a run carried over
    # from an earlier revision whose code it runs is unchanged names that revision ("timed_at")
    at = f" (at {run['timed_at']})" if run.get("timed_at") else ""
    if run["finished"]:
        return f"{run['seconds']:.0f}{at}"
    return (f"> {run['seconds']:.0f} (stopped)" if run["rc"] is None else f"failed (rc {run['rc']})") + at


def write_results(args, revisions):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump({"settings": vars(args), "cpu_count": os.cpu_count(), "revisions": revisions}, f, indent=2)
    first, last = revisions[0], revisions[-1]
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        f"# {args.name}: the CASR, ATRank and MIIR commands of issue #18, before ({first['commit']}) and after ({last['commit']})",
        "",
        f"`python benchmarks/seed_speed.py --revs {args.revs} --timeout {args.timeout:.0f}` on {os.cpu_count()} CPU cores, one command at a time, "
        "each on the embedded default data (3,000 users, 5,994 items) in a fresh checkout of the revision; the first command of a "
        "revision also converts the data. Speed-up = before / after seconds (a lower bound where before was stopped).",
        "",
        f"| command | s at {first['commit']} | s at {last['commit']} | speed-up | test HR@10 before | test HR@10 after | popularity HR@10 | test AUC after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys([*first["runs"], *last["runs"]]))
    for name in names:
        before, after = first["runs"].get(name), last["runs"].get(name)
        speedup = "—"
        if before and after and after["finished"] and before["seconds"]:
            speedup = f"{'≥ ' if not before['finished'] else ''}{before['seconds'] / after['seconds']:.1f}×"
        command = (after or before)["command"].replace(f"{args.work_dir}/", "").replace(f"/{last['commit']}/", "/")
        lines.append(
            f"| `{command}` | {_cell(before) if first is not last else '—'} | {_cell(after)} | {speedup} | "
            f"{fmt((before or {}).get('test_hr@10')) if first is not last else '—'} | {fmt((after or {}).get('test_hr@10'))} | "
            f"{fmt((after or before or {}).get('popularity_hr@10'))} | {fmt((after or {}).get('test_auc'))} |"
        )
    write_markdown(lines, args.name)


if __name__ == "__main__":
    sys.exit(main())

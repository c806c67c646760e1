"""Hyper-parameter search from RecBole / CASR ``hyper.test`` files, with Optuna.

A params file has one parameter per line, ``name distribution arguments``
(blank lines and lines starting with ``#`` are ignored)::

    learning_rate loguniform -8,0          # exp(uniform(-8, 0)): e^-8 .. 1
    embedding_dim choice [32,64,128]
    dilations choice ['[1,4,1,4]','[1,2,4,8]']
    dropout uniform 0,0.5
    stride quniform 5,25,5                 # round(uniform(5, 25) / 5) * 5

The semantics are RecBole's ``HyperTuning._build_space_from_file`` (hyperopt):
``loguniform a,b`` draws ``exp(uniform(a, b))`` (so its bounds are e^a..e^b),
``quniform a,b,q`` draws ``round(uniform(a, b) / q) * q``, ``choice`` takes a
Python literal list (parsed with ``ast.literal_eval``; a string element that
is itself a literal, such as ``'[64,64,64]'``, is parsed again when the
setting is not a string, as RecBole's config does). RecBole's names
``embedding_size``, ``train_batch_size``, ``dropout_prob``,
``MAX_ITEM_LIST_LENGTH`` and ``stopping_step`` are accepted for peterrec's
``embedding_dim``, ``batch_size``, ``dropout``, ``max_len`` and ``patience``.

The search uses Optuna's TPE sampler (the modern equivalent of the hyperopt
TPE that RecBole uses), mapped as: loguniform -> ``suggest_float(e^a, e^b,
log=True)`` (the same distribution), uniform -> ``suggest_float(a, b)``,
quniform -> ``suggest_int`` over the multiples ``k`` of ``q`` between
``round(a/q)`` and ``round(b/q)`` (value ``k*q``: the support of hyperopt's
quniform), choice -> ``suggest_categorical``.

:func:`tune` runs the trials of one model, each a normal training job in its
own ``trial-NNN/`` directory, maximising validation MRR@10; it writes
``trials.json`` and ``results.md`` after every trial and resumes: finished
trials are not rerun and an interrupted trial resumes from its checkpoints.

``trial_seeds`` trains every trial once per seed and scores it by the mean
validation MRR@10 over them (on ~1,000 evaluation users one run's score is
mostly seed noise: the spread between seeds is as large as between trials).
The run of the search's own ``seed`` trains in ``trial-NNN/``, another seed
``s`` in ``trial-NNN-seed-s/``. A finished search can be given more seeds
later: its trials keep their parameters (the sampler is seeded per trial)
and only the missing runs train.
"""

from __future__ import annotations

import json
import os
import time

from absl import logging

from peterrec import recipes
from peterrec.errors import ConfigError
from peterrec.search_space import DISTRIBUTIONS, N_NUMBERS, ParamSpec, describe_specs, parse_line, parse_params_file  # noqa: F401
from peterrec.settings import RECBOLE_NAMES, _literal, coerce, resolve_field  # noqa: F401  (re-exported)

OBJECTIVE = "mrr@10"  # validation metric maximised (the Trainer's model selection metric)
TRIALS_FILE = "trials.json"
RESULTS_FILE = "results.md"


# --- models: the recipe registry (peterrec.recipes) ------------------------------------------

ModelJob = recipes.Recipe  # how to train one model: ``run(config_class(**overrides, **fixed)) -> metrics``
_MODEL_JOBS = recipes._REGISTRY


def register_model(name, config_class, run, fixed=None, clear_session=True, own_defaults=()):
    """Make ``name`` available to tune/benchmark: registers a :class:`peterrec.recipes.Recipe`.

    ``run(config_class(**settings, **fixed))`` trains one run into ``config.model_dir`` and returns
    its metrics (``valid``/``test`` dicts with ``mrr@10``, ``hr@10``, ``ndcg@10``, ...).
    ``own_defaults``: fields whose config defaults an unset flag or the benchmark protocol keeps.
    """
    recipes.register(recipes.Recipe(name, config_class, run, dict(fixed or {}), clear_session, tuple(own_defaults)))


def model_job(name, flag="--model") -> recipes.Recipe:
    """The recipe for ``--model name`` (any registered model)."""
    return recipes.get(name, flag)


def check_specs(specs, job: ModelJob):
    """Every spec names a field of the model's config (ConfigError naming file:line and the field)."""
    fields = {}
    for spec in specs:
        field = resolve_field(job.config_class, spec.name, spec.where, job.name)
        if field in fields:
            raise ConfigError(f"{spec.where}: {spec.name!r} sets {field}, already set on {fields[field]}")
        fields[field] = spec.where
        if field in ("model_dir", "seed") or field in job.fixed:
            raise ConfigError(f"{spec.where}: {field} is set by the tuner, not searched")


# --- the search ----------------------------------------------------------------------------------


def tune(model, params, base_overrides=None, n_trials=10, model_dir=None, seed=42, verbose=1, trial_seeds=None):
    """Search ``params`` (a list of :class:`ParamSpec`) for ``model``, maximising validation MRR@10.

    Args:
        model: a model name (see :func:`model_job`).
        params: the search space, e.g. ``parse_params_file("benchmarks/hyper.test")``.
        base_overrides: config fields every trial shares (data, epochs, ...); the
            searched parameters override them.
        n_trials: total number of trials (finished trials in ``model_dir`` count).
        model_dir: the tune directory (default ``checkpoints/tune-<model>``); trial
            ``i`` trains in ``<model_dir>/trial-<i>``.
        seed: the sampler's seed and every trial's training seed.
        trial_seeds: training seeds of every trial (default ``[seed]``); a trial's
            value is the mean of their validation MRR@10 (see the module docstring).

    Returns:
        The list of trial records written to ``trials.json``.
    """
    import optuna

    job = model_job(model)
    check_specs(params, job)
    base = dict(base_overrides or {})
    base.pop("model_dir", None)
    base.pop("seed", None)
    model_dir = model_dir or os.path.join("checkpoints", f"tune-{model}")
    trial_seeds = [int(s) for s in (trial_seeds or [seed])]
    if len(set(trial_seeds)) != len(trial_seeds):
        raise ConfigError(f"--trial_seeds: each seed once, got {','.join(map(str, trial_seeds))}")
    header = {
        "model": model,
        "objective": f"valid {OBJECTIVE}",
        "space": [s.as_dict() for s in params],
        "base_overrides": base,
        "seed": seed,
        "trial_seeds": trial_seeds,
    }
    header = json.loads(json.dumps(header))  # tuples -> lists, as read back from the file
    records = _load_trials(model_dir, header, seed)
    # validate the base configuration once, before any trial trains
    job.config(base | {"model_dir": model_dir, "seed": seed}, where="--flags").validate()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {s.name: s.optuna_distribution() for s in params}

    def save():
        write_text(os.path.join(model_dir, TRIALS_FILE), json.dumps(header | {"trials": records}, indent=2) + "\n")
        write_text(os.path.join(model_dir, RESULTS_FILE), results_markdown(header, records))

    for record in records:
        # interrupted trials resume in their own directories (their checkpoints); finished ones train the seeds they lack
        missing = [s for s in trial_seeds if str(s) not in record.get("runs", {})]
        if record["state"] == "running" or (record["state"] == "complete" and missing):
            if verbose:
                logging.info(f"trial {record['number']}: training seed(s) {', '.join(map(str, missing))}")
            _run_trial(job, base, record, seed, trial_seeds, verbose, save)
        if record["state"] == "complete":
            study.add_trial(optuna.trial.create_trial(params=record["optuna_params"], distributions=dists, value=record["value"]))
        elif record["state"] == "failed":
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params=record["optuna_params"], distributions=dists))
    while len(records) < n_trials:
        # a sampler seeded per trial number: a resumed search draws what an uninterrupted one would
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(records))
        trial = study.ask()
        values = {s.name: s.suggest(trial) for s in params}
        number = len(records)
        record = {
            "number": number,
            "state": "running",
            "params": _jsonable(values),
            "optuna_params": dict(trial.params),
            "model_dir": os.path.join(model_dir, f"trial-{number:03d}"),
        }
        records.append(record)
        if verbose:
            logging.info(f"trial {number}: {_format_params(record['params'])}")
        _run_trial(job, base, record, seed, trial_seeds, verbose, save)
        if record["state"] == "complete":
            study.tell(trial, record["value"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    save()
    return records


def trial_dir(record, seed, search_seed):
    """Where ``record``'s run of training seed ``seed`` trains: its own directory for the search's seed."""
    return record["model_dir"] if seed == search_seed else f"{record['model_dir']}-seed-{seed}"


SUMMED = ("train_wall_seconds", "wall_seconds")


def _run_trial(job, base, record, search_seed, trial_seeds, verbose, save):
    """Train ``record``'s runs that ``trial_seeds`` lacks, then summarise them into ``record`` (state complete, or
    failed when a run diverged); saves the tables before and after each run."""
    params = record["params"]
    where = f"trial {record['number']}"
    runs = record.setdefault("runs", {})
    for seed in trial_seeds:
        if str(seed) in runs:
            continue
        cfg = job.config(base | params | {"model_dir": trial_dir(record, seed, search_seed), "seed": seed}, where=where)
        try:
            cfg.validate()
        except ConfigError as err:  # an impossible combination of searched values: the params file's error
            raise ConfigError(f"{where} ({_format_params(params)}): {err}") from err
        record["state"] = "running"
        save()
        if job.clear_session:
            import keras

            keras.backend.clear_session()
        start = time.perf_counter()
        try:
            metrics = job.run(cfg)
        except ConfigError as err:
            if not stopped_on_fault(cfg.model_dir):
                raise
            # training diverged (NaN/Inf or a diverging loss): a failed trial, recorded and reported
            record.update(state="failed", error=(f"seed {seed}: {err}" if len(trial_seeds) > 1 else str(err)), wall_seconds=round(time.perf_counter() - start, 2))
            if verbose:
                logging.warning(f"trial {record['number']} failed: {err}")
            save()
            return
        runs[str(seed)] = {
            "value": float(metrics["valid"][OBJECTIVE]),
            "valid": dict(metrics["valid"]),
            "test": dict(metrics["test"]),
            "selected_epoch": metrics.get("selected_epoch"),
            "epochs_run": metrics.get("epochs_run"),
            "train_wall_seconds": metrics.get("train_wall_seconds"),
            "wall_seconds": round(time.perf_counter() - start, 2),
        }
        if verbose:
            logging.info(f"trial {record['number']} seed {seed}: valid {OBJECTIVE} {runs[str(seed)]['value']:.4f}")
    _summarise(record, trial_seeds)
    if verbose:
        logging.info(f"trial {record['number']}: valid {OBJECTIVE} {record['value']:.4f} (mean of {len(trial_seeds)} seed(s)), "
                     f"test hr@10 {record['test'].get('hr@10', float('nan')):.4f}")
    save()


def _summarise(record, trial_seeds):
    """A complete record's value, valid and test metrics as means over the runs of ``trial_seeds``."""
    runs = [record["runs"][str(s)] for s in trial_seeds]

    def mean(dicts):
        return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0] if all(k in d for d in dicts)}

    record.update(
        state="complete",
        value=sum(r["value"] for r in runs) / len(runs),
        valid=mean([r["valid"] for r in runs]),
        test=mean([r["test"] for r in runs]),
        seeds=list(trial_seeds),
        selected_epoch=[r["selected_epoch"] for r in runs] if len(runs) > 1 else runs[0]["selected_epoch"],
        epochs_run=[r["epochs_run"] for r in runs] if len(runs) > 1 else runs[0]["epochs_run"],
        **{k: round(sum(r[k] or 0.0 for r in runs), 2) for k in SUMMED},
    )


def stopped_on_fault(model_dir):
    """Whether the run in ``model_dir`` stopped on a numerical fault (its metrics.json says so)."""
    path = os.path.join(model_dir, "metrics.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get("stopped_on_nan"))


def _load_trials(model_dir, header, search_seed):
    path = os.path.join(model_dir, TRIALS_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from err
    from peterrec.jobs import RESUMABLE_FIELDS

    def fixed(h):  # settings that may change between sessions of one search (as for a resumed job; seeds may be added)
        out = h | {"base_overrides": {k: v for k, v in h.get("base_overrides", {}).items() if k not in RESUMABLE_FIELDS}}
        out.pop("trial_seeds", None)
        return out

    diffs = [f"{key}: {fixed(old).get(key)!r} -> {fixed(header)[key]!r}" for key in fixed(header) if fixed(old).get(key) != fixed(header)[key]]
    if diffs:
        raise ConfigError(
            f"--model_dir {model_dir} holds a search with a different setup ({'; '.join(diffs)}). "
            "Use another --model_dir, or delete that directory to start over."
        )
    records = list(old.get("trials", []))
    for record in records:  # a search written before trial_seeds: its one run is the search seed's
        if record["state"] == "complete" and "runs" not in record:
            record["runs"] = {str(search_seed): {k: record.get(k) for k in
                                                 ("value", "valid", "test", "selected_epoch", "epochs_run", *SUMMED)}}
    return records


def best_trial(records):
    """The completed record with the highest objective (first one on ties), or None."""
    done = [r for r in records if r["state"] == "complete"]
    return max(done, key=lambda r: r["value"]) if done else None


def results_markdown(header, records):
    """The results table: one row per trial, the best marked."""
    best = best_trial(records)
    lines = [
        f"# Hyper-parameter search: {header['model']}",
        "",
        f"Objective: {header['objective']} (maximised{_seeds_note(header)}); Optuna TPE, seed {header['seed']}. "
        f"{sum(r['state'] == 'complete' for r in records)} of {len(records)} trials complete.",
        "",
        f"Search space: {'; '.join(_format_spec(s) for s in header['space'])}.",
        "",
        "| trial | params | valid MRR@10 | test HR@10 | test NDCG@10 | epochs (selected) | wall s | best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["state"] == "complete":
            per_seed = [r["runs"][str(seed)]["value"] for seed in r.get("seeds", [])] if len(r.get("seeds", [])) > 1 else []
            value = f"{r['value']:.4f}" + (f" ({', '.join(f'{v:.4f}' for v in per_seed)})" if per_seed else "")
            cells = [value, f"{r['test']['hr@10']:.4f}", f"{r['test']['ndcg@10']:.4f}",
                     f"{_epochs(r.get('epochs_run'))} ({_epochs(r.get('selected_epoch'))})", f"{r['wall_seconds']:.0f}"]
        else:
            cells = [r["state"] + (f": {r['error']}" if r.get("error") else ""), "—", "—", "—",
                     f"{r['wall_seconds']:.0f}" if "wall_seconds" in r else "—"]
        mark = "**best**" if r is best else ""
        params = {s["name"]: r["params"][s["name"]] for s in header["space"] if s["name"] in r["params"]}
        lines.append(f"| {r['number']} | {_format_params(params)} | {' | '.join(cells)} | {mark} |")
    return "\n".join(lines) + "\n"


def _seeds_note(header):
    seeds = header.get("trial_seeds") or [header["seed"]]
    return f", mean over training seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else ""


def _epochs(value):
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def write_text(path, text):
    """Write a text file atomically (temp file in the same directory, then rename)."""
    from peterrec import io

    io.write_atomic(path, lambda f: f.write(text))


def _jsonable(values):
    return json.loads(json.dumps(values))


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def _format_params(params):
    return ", ".join(f"{k}={_format_value(v)}" for k, v in params.items())


def _format_spec(spec):
    args = spec["args"]
    if spec["distribution"] == "choice":
        return f"{spec['name']} choice {json.dumps(args)}"
    return f"{spec['name']} {spec['distribution']} {','.join(f'{a:g}' for a in args)}"

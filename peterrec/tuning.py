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


def tune(model, params, base_overrides=None, n_trials=10, model_dir=None, seed=42, verbose=1):
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
    header = {
        "model": model,
        "objective": f"valid {OBJECTIVE}",
        "space": [s.as_dict() for s in params],
        "base_overrides": base,
        "seed": seed,
    }
    header = json.loads(json.dumps(header))  # tuples -> lists, as read back from the file
    records = _load_trials(model_dir, header)
    # validate the base configuration once, before any trial trains
    job.config(base | {"model_dir": model_dir, "seed": seed}, where="--flags").validate()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {s.name: s.optuna_distribution() for s in params}
    for record in records:
        if record["state"] == "complete":
            study.add_trial(optuna.trial.create_trial(params=record["optuna_params"], distributions=dists, value=record["value"]))
        elif record["state"] == "failed":
            state = optuna.trial.TrialState.FAIL
            study.add_trial(optuna.trial.create_trial(state=state, params=record["optuna_params"], distributions=dists))

    def save():
        write_text(os.path.join(model_dir, TRIALS_FILE), json.dumps(header | {"trials": records}, indent=2) + "\n")
        write_text(os.path.join(model_dir, RESULTS_FILE), results_markdown(header, records))

    for record in records:  # interrupted trials resume in their own directory (their checkpoints)
        if record["state"] == "running":
            if verbose:
                logging.info(f"trial {record['number']}: resuming {record['model_dir']}")
            _run_trial(job, base, record, seed, verbose, save)
            trial = optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if record["state"] == "complete" else optuna.trial.TrialState.FAIL,
                params=record["optuna_params"], distributions=dists, value=record.get("value"),
            )
            study.add_trial(trial)
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
        _run_trial(job, base, record, seed, verbose, save)
        if record["state"] == "complete":
            study.tell(trial, record["value"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    save()
    return records


def _run_trial(job, base, record, seed, verbose, save):
    """Train one trial into ``record`` (state complete or failed), saving the tables before and after."""
    params = record["params"]
    where = f"trial {record['number']}"
    cfg = job.config(base | params | {"model_dir": record["model_dir"], "seed": seed}, where=where)
    try:
        cfg.validate()
    except ConfigError as err:  # an impossible combination of searched values: the params file's error
        raise ConfigError(f"{where} ({_format_params(params)}): {err}") from err
    save()
    if job.clear_session:
        import keras

        keras.backend.clear_session()
    start = time.perf_counter()
    try:
        metrics = job.run(cfg)
    except ConfigError as err:
        if not stopped_on_fault(record["model_dir"]):
            raise
        # training diverged (NaN/Inf or a diverging loss): a failed trial, recorded and reported
        record.update(state="failed", error=str(err), wall_seconds=round(time.perf_counter() - start, 2))
        if verbose:
            logging.warning(f"trial {record['number']} failed: {err}")
        save()
        return
    record.update(
        state="complete",
        value=float(metrics["valid"][OBJECTIVE]),
        valid={k: v for k, v in metrics["valid"].items()},
        test={k: v for k, v in metrics["test"].items()},
        selected_epoch=metrics.get("selected_epoch"),
        epochs_run=metrics.get("epochs_run"),
        train_wall_seconds=metrics.get("train_wall_seconds"),
        wall_seconds=round(time.perf_counter() - start, 2),
    )
    if verbose:
        logging.info(f"trial {record['number']}: valid {OBJECTIVE} {record['value']:.4f}, test hr@10 {record['test'].get('hr@10', float('nan')):.4f}")
    save()


def stopped_on_fault(model_dir):
    """Whether the run in ``model_dir`` stopped on a numerical fault (its metrics.json says so)."""
    path = os.path.join(model_dir, "metrics.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get("stopped_on_nan"))


def _load_trials(model_dir, header):
    path = os.path.join(model_dir, TRIALS_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from err
    from peterrec.jobs import RESUMABLE_FIELDS

    def fixed(h):  # settings that may change between sessions of one search (as for a resumed job)
        return h | {"base_overrides": {k: v for k, v in h.get("base_overrides", {}).items() if k not in RESUMABLE_FIELDS}}

    diffs = [f"{key}: {fixed(old).get(key)!r} -> {fixed(header)[key]!r}" for key in header if fixed(old).get(key) != fixed(header)[key]]
    if diffs:
        raise ConfigError(
            f"--model_dir {model_dir} holds a search with a different setup ({'; '.join(diffs)}). "
            "Use another --model_dir, or delete that directory to start over."
        )
    return list(old.get("trials", []))


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
        f"Objective: {header['objective']} (maximised); Optuna TPE, seed {header['seed']}. "
        f"{sum(r['state'] == 'complete' for r in records)} of {len(records)} trials complete.",
        "",
        f"Search space: {'; '.join(_format_spec(s) for s in header['space'])}.",
        "",
        "| trial | params | valid MRR@10 | test HR@10 | test NDCG@10 | epochs (selected) | wall s | best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["state"] == "complete":
            cells = [f"{r['value']:.4f}", f"{r['test']['hr@10']:.4f}", f"{r['test']['ndcg@10']:.4f}",
                     f"{r.get('epochs_run')} ({r.get('selected_epoch')})", f"{r['wall_seconds']:.0f}"]
        else:
            cells = [r["state"] + (f": {r['error']}" if r.get("error") else ""), "—", "—", "—",
                     f"{r['wall_seconds']:.0f}" if "wall_seconds" in r else "—"]
        mark = "**best**" if r is best else ""
        params = {s["name"]: r["params"][s["name"]] for s in header["space"] if s["name"] in r["params"]}
        lines.append(f"| {r['number']} | {_format_params(params)} | {' | '.join(cells)} | {mark} |")
    return "\n".join(lines) + "\n"


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

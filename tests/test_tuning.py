"""hyper.test parsing (RecBole / CASR format), its Optuna mapping, and the resumable search."""

import dataclasses
import json
import math
import os

import numpy as np
import optuna
import pytest

from peterrec import tuning
from peterrec.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(tmp_path, text, name="hyper.test"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_each_line_type_comments_and_blank_lines(tmp_path):
    path = _params(
        tmp_path,
        "# a comment\n\n"
        "learning_rate loguniform -8,0\n"
        "  dropout   uniform 0.1, 0.5  \n"
        "stride quniform 5,25,5\n"
        "embedding_dim choice [64, 96, 128]\n"
        "mlp_hidden_size choice ['[64,64,64]','[128,128]']\n"
        "   # indented comment\n",
    )
    specs = tuning.parse_params_file(path)
    assert [(s.name, s.distribution, s.args, s.line) for s in specs] == [
        ("learning_rate", "loguniform", (-8.0, 0.0), 3),
        ("dropout", "uniform", (0.1, 0.5), 4),
        ("stride", "quniform", (5.0, 25.0, 5.0), 5),
        ("embedding_dim", "choice", (64, 96, 128), 6),
        ("mlp_hidden_size", "choice", ("[64,64,64]", "[128,128]"), 7),
    ]
    assert specs[0].where == f"{path}:3"


@pytest.mark.parametrize(
    "line, needle",
    [
        ("learning_rate normal 0,1", "unknown distribution 'normal'"),
        ("learning_rate loguniform -8", "loguniform takes 2 comma-separated numbers"),
        ("learning_rate uniform 1,2,3", "uniform takes 2 comma-separated numbers"),
        ("stride quniform 5,25", "quniform takes 3 comma-separated numbers"),
        ("learning_rate uniform abc,1", "'abc' is not a number"),
        ("learning_rate uniform 0,inf", "'inf' is not a finite number"),
        ("dropout uniform 0.5,0.1", "low 0.5 is greater than high 0.1"),
        ("stride quniform 5,25,0", "q 0 must be > 0"),
        ("embedding_dim choice [64,", "are not a Python literal list"),
        ("embedding_dim choice __import__('os')", "are not a Python literal list"),
        ("embedding_dim choice []", "choice needs a non-empty list"),
        ("embedding_dim choice 64", "choice needs a non-empty list"),
        ("embedding_dim choice [64,64]", "repeat a value"),
        ("learning_rate loguniform", "expected 'name distribution arguments'"),
        ("1rate uniform 0,1", "'1rate' is not a parameter name"),
    ],
)
def test_malformed_lines_name_file_line_and_token(tmp_path, line, needle):
    path = _params(tmp_path, "dropout uniform 0,0.5\n" + line + "\n")
    with pytest.raises(ConfigError) as err:
        tuning.parse_params_file(path)
    assert f"{path}:2:" in str(err.value) and needle in str(err.value), str(err.value)


def test_duplicate_empty_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match=r":3: 'dropout' is already defined on line 1"):
        tuning.parse_params_file(_params(tmp_path, "dropout uniform 0,0.5\nstride quniform 5,10,5\ndropout uniform 0,1\n"))
    with pytest.raises(ConfigError, match="no parameters"):
        tuning.parse_params_file(_params(tmp_path, "# nothing\n\n", "empty.test"))
    with pytest.raises(ConfigError, match="--params_file .*missing.test: cannot read"):
        tuning.parse_params_file(str(tmp_path / "missing.test"))


def _draws(spec, n=300):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = []
    for _ in range(n):
        trial = study.ask()
        values.append(spec.suggest(trial))
        assert trial.distributions[spec.name] == spec.optuna_distribution()  # what resume re-creates
        study.tell(trial, 0.0)
    return values


def test_optuna_mapping_follows_hyperopt_semantics():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # loguniform a,b = exp(uniform(a, b)): bounds e^a..e^b, uniform in log space
    log_spec = tuning.parse_line("learning_rate loguniform -8,0")
    dist = log_spec.optuna_distribution()
    assert dist.log and dist.low == pytest.approx(math.exp(-8)) and dist.high == pytest.approx(1.0)
    logs = np.log(_draws(log_spec))
    assert logs.min() >= -8 - 1e-9 and logs.max() <= 1e-9
    assert abs(logs.mean() - (-4.0)) < 0.4 and abs(np.mean(logs < -4) - 0.5) < 0.1
    # uniform a,b
    values = np.array(_draws(tuning.parse_line("dropout uniform 0.1,0.5")))
    assert values.min() >= 0.1 and values.max() <= 0.5 and abs(values.mean() - 0.3) < 0.03
    # quniform a,b,q = round(uniform(a,b)/q)*q: multiples of q, ints for an integral q
    q_values = _draws(tuning.parse_line("stride quniform 5,25,5"))
    assert set(q_values) == {5, 10, 15, 20, 25} and all(isinstance(v, int) for v in q_values)
    q_float = set(_draws(tuning.parse_line("dropout quniform 0,0.3,0.1"), 100))
    assert q_float == {0.0, 0.1, 0.2, 0.3}
    # choice: the original values come back, lists included (Optuna stores their repr)
    choice = tuning.parse_line("dilations choice [[1,4],[1,2,4]]")
    assert choice.optuna_distribution().choices == ("[1, 4]", "[1, 2, 4]")
    assert {tuple(v) for v in _draws(choice, 50)} == {(1, 4), (1, 2, 4)}


def test_values_become_typed_config_fields():
    from peterrec.pretraining import PretrainConfig

    job = tuning.ModelJob("nextitnet", PretrainConfig, None, {"backbone": "nextitnet"})
    cfg = job.config({"dilations": "[1,2,4]", "embedding_size": 32.0, "learning_rate": 1, "jit_compile": 1, "stride": 10.0})
    assert cfg.dilations == (1, 2, 4) and cfg.embedding_dim == 32 and isinstance(cfg.embedding_dim, int)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float) and cfg.jit_compile is True and cfg.stride == 10
    with pytest.raises(ConfigError, match="dilations expects a tuple"):
        job.config({"dilations": 4})
    spec = tuning.parse_line("mlp_hidden_size choice [64,128]", "hyper.test", 4)
    with pytest.raises(ConfigError, match=r"hyper.test:4: 'mlp_hidden_size' is not a setting of nextitnet .*no field 'mlp_hidden_size'"):
        tuning.check_specs([spec], job)


# --- the search, on a fake model (no training) ------------------------------------------------


@dataclasses.dataclass
class FakeConfig:
    learning_rate: float = 1e-3
    embedding_dim: int = 64
    dilations: tuple = (1, 4)
    epochs: int = 1
    seed: int = 0
    model_dir: str | None = None

    def validate(self):
        if self.embedding_dim > 1000:
            raise ConfigError(f"--embedding_dim: too large, got {self.embedding_dim}")


def fake_run(calls):
    def run(cfg):
        calls.append(cfg)
        if cfg.learning_rate > 0.1:  # as pretraining.run after a numerical fault: metrics.json, then ConfigError
            os.makedirs(cfg.model_dir, exist_ok=True)
            open(os.path.join(cfg.model_dir, "metrics.json"), "w").write(json.dumps({"stopped_on_nan": True}))
            raise ConfigError("training diverged (NaN/Inf loss) at step 3")
        if cfg.epochs == 99:
            raise ConfigError("--model_dir holds a run with a different configuration")
        score = 0.1 - abs(math.log(cfg.learning_rate) + 6) / 100 + cfg.embedding_dim / 1e4
        metrics = {"mrr@10": score, "hr@10": 2 * score, "ndcg@10": 1.5 * score}
        return {"valid": metrics, "test": metrics, "selected_epoch": 1, "epochs_run": 1, "train_wall_seconds": 0.1}

    return run


@pytest.fixture
def fake_model():
    calls = []
    tuning.register_model("fake", FakeConfig, fake_run(calls), clear_session=False)
    yield calls
    tuning._MODEL_JOBS.pop("fake", None)


SPACE = "learning_rate loguniform -9,-4\nembedding_dim choice [16,32]\ndilations choice ['[1,2]','[1,4]']\n"


def _rows(results_md):
    return [line for line in results_md.splitlines() if line.startswith("| ") and line[2].isdigit()]


def test_search_writes_tables_and_resumes(tmp_path, fake_model):
    specs = tuning.parse_params_file(_params(tmp_path, SPACE))
    out = tmp_path / "tune"
    records = tuning.tune("fake", specs, {"epochs": 2}, 4, str(out), seed=3, verbose=0)
    assert len(fake_model) == 4 and [r["state"] for r in records] == ["complete"] * 4
    assert {c.model_dir for c in fake_model} == {str(out / f"trial-{i:03d}") for i in range(4)}
    assert all(c.epochs == 2 and c.seed == 3 and c.dilations in ((1, 2), (1, 4)) for c in fake_model)
    saved = json.loads((out / "trials.json").read_text())
    assert [t["value"] for t in saved["trials"]] == [r["value"] for r in records]
    rows = _rows((out / "results.md").read_text())
    best = max(range(4), key=lambda i: records[i]["value"])
    assert len(rows) == 4 and [("**best**" in row) for row in rows] == [i == best for i in range(4)]

    # resume: nothing reruns; raising --trials runs only the new ones, with what an uninterrupted search draws
    fake_model.clear()
    assert tuning.tune("fake", specs, {"epochs": 2}, 4, str(out), seed=3, verbose=0) == records and not fake_model
    more = tuning.tune("fake", specs, {"epochs": 2}, 6, str(out), seed=3, verbose=0)
    assert len(fake_model) == 2 and more[:4] == records
    fresh = tuning.tune("fake", specs, {"epochs": 2}, 6, str(tmp_path / "fresh"), seed=3, verbose=0)
    assert [r["params"] for r in fresh] == [r["params"] for r in more]
    # another search space in the same directory is refused
    other = tuning.parse_params_file(_params(tmp_path, "learning_rate loguniform -9,-5\n", "other.test"))
    with pytest.raises(ConfigError, match="holds a search with a different setup"):
        tuning.tune("fake", other, {"epochs": 2}, 6, str(out), seed=3, verbose=0)


def test_interrupted_trial_resumes_in_its_directory_and_failures_are_recorded(tmp_path, fake_model):
    specs = tuning.parse_params_file(_params(tmp_path, "learning_rate loguniform -9,0\n"))
    out = tmp_path / "tune"
    records = tuning.tune("fake", specs, {}, 8, str(out), seed=0, verbose=0)
    failed = [r for r in records if r["state"] == "failed"]
    assert failed and all("diverged" in r["error"] for r in failed)  # lr > 0.1 diverges: recorded, the search goes on
    assert len(records) == 8 and "failed: training diverged" in (out / "results.md").read_text()
    # a trial killed while training is "running" in trials.json: it is retrained in its own directory
    saved = json.loads((out / "trials.json").read_text())
    saved["trials"][-1] = {k: saved["trials"][-1][k] for k in ("number", "params", "optuna_params", "model_dir")} | {"state": "running"}
    (out / "trials.json").write_text(json.dumps(saved))
    fake_model.clear()
    resumed = tuning.tune("fake", specs, {}, 8, str(out), seed=0, verbose=0)
    assert [c.model_dir for c in fake_model] == [saved["trials"][-1]["model_dir"]]
    assert resumed[-1]["state"] in ("complete", "failed") and len(resumed) == 8


def test_trial_seeds_average_and_extend_a_finished_search(tmp_path, fake_model):
    specs = tuning.parse_params_file(_params(tmp_path, SPACE))
    out = tmp_path / "tune"
    one = tuning.tune("fake", specs, {}, 3, str(out), seed=3, verbose=0)
    fake_model.clear()
    # the same search with two training seeds: only the new seed's runs train, in their own directories
    two = tuning.tune("fake", specs, {}, 3, str(out), seed=3, verbose=0, trial_seeds=[3, 5])
    assert sorted((c.model_dir, c.seed) for c in fake_model) == [(str(out / f"trial-{i:03d}-seed-5"), 5) for i in range(3)]
    assert [r["params"] for r in two] == [r["params"] for r in one]
    for r in two:
        runs = [r["runs"]["3"]["value"], r["runs"]["5"]["value"]]
        assert r["value"] == pytest.approx(sum(runs) / 2) and r["seeds"] == [3, 5]
        assert r["test"]["hr@10"] == pytest.approx((r["runs"]["3"]["test"]["hr@10"] + r["runs"]["5"]["test"]["hr@10"]) / 2)
    table = (out / "results.md").read_text()
    assert "mean over training seeds 3,5" in table and len(_rows(table)) == 3
    # a fresh two-seed search draws the same parameters and trains both seeds of each trial
    fake_model.clear()
    fresh = tuning.tune("fake", specs, {}, 3, str(tmp_path / "fresh"), seed=3, verbose=0, trial_seeds=[3, 5])
    assert len(fake_model) == 6 and [r["params"] for r in fresh] == [r["params"] for r in two]
    assert [r["value"] for r in fresh] == pytest.approx([r["value"] for r in two])
    with pytest.raises(ConfigError, match="--trial_seeds: each seed once"):
        tuning.tune("fake", specs, {}, 3, str(out), seed=3, verbose=0, trial_seeds=[3, 3])


def test_other_errors_stop_the_search(tmp_path, fake_model):
    specs = tuning.parse_params_file(_params(tmp_path, "embedding_dim choice [16]\n"))
    with pytest.raises(ConfigError, match="holds a run with a different configuration"):
        tuning.tune("fake", specs, {"epochs": 99}, 2, str(tmp_path / "t"), verbose=0)
    assert len(fake_model) == 1


def test_impossible_combination_names_the_trial(tmp_path, fake_model):
    specs = tuning.parse_params_file(_params(tmp_path, "embedding_dim choice [2000]\n"))
    with pytest.raises(ConfigError, match=r"trial 0 \(embedding_dim=2000\): --embedding_dim: too large"):
        tuning.tune("fake", specs, {}, 1, str(tmp_path / "t"), verbose=0)


# --- real training -------------------------------------------------------------------------------


def test_two_trial_nextitnet_search(tmp_path, tiny_inter):
    data = str(tiny_inter)
    specs = tuning.parse_params_file(_params(tmp_path, "learning_rate loguniform -7,-5\nembedding_dim choice [8,16]\n"))
    base = dict(data=data, tfrecord_dir=str(tmp_path / "tfr"), dilations=(1, 2), max_len=20, stride=10, epochs=1, verbose=0, num_shards=2)
    records = tuning.tune("nextitnet", specs, base, 2, str(tmp_path / "tune"), seed=1, verbose=0)
    assert [r["state"] for r in records] == ["complete", "complete"]
    for r in records:
        metrics = json.loads(open(os.path.join(r["model_dir"], "metrics.json")).read())
        assert r["value"] == metrics["valid"]["mrr@10"] and r["test"]["hr@10"] == metrics["test"]["hr@10"]
    rows = _rows((tmp_path / "tune" / "results.md").read_text())
    assert len(rows) == 2 and sum("**best**" in row for row in rows) == 1


def test_cli_bad_distribution_is_one_clear_error(tmp_path, cli):
    path = _params(tmp_path, "learning_rate loguniform -8,0\ndropout gaussian 0,1\n")
    proc = cli("pipelines.tune", ["--model", "nextitnet", "--params_file", path, "--model_dir", str(tmp_path / "t")], cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {path}:2: unknown distribution 'gaussian' (expected one of choice, loguniform, quniform, uniform)"
    )
    assert not (tmp_path / "t").exists()


def test_cli_takes_casr_flags_and_checks_the_sampler_export(tmp_path, cli):
    """pipelines.tune --model casr takes pipelines.casr's flags (--sampler_dir, --learning, ...) as every trial's settings."""
    proc = cli("pipelines.tune", ["--model", "casr", "--params_file", os.path.join(REPO, "benchmarks", "casr_hyper_heuristic.test"),
                                  "--learning", "heuristic", "--sampler_dir", str(tmp_path / "missing"), "--model_dir", str(tmp_path / "t")],
               cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "is not an export directory" in proc.stderr.strip().splitlines()[-1] and str(tmp_path / "missing") in proc.stderr


def test_one_trial_caser_search(tmp_path, tiny_inter):
    """Caser is a tune model: its config takes the shared settings and Caser's knobs (RecBole names included)."""
    job = tuning.model_job("caser")
    assert job.config({"embedding_size": 8.0, "nh": 4}).caser().d == 8 and set(job.own_defaults) >= {"max_len", "embedding_dim"}
    specs = tuning.parse_params_file(_params(tmp_path, "learning_rate loguniform -6,-5\nnv choice [2,3]\n"))
    base = dict(data=str(tiny_inter), tfrecord_dir=str(tmp_path / "tfr"), embedding_dim=8, nh=4, batch_size=64, epochs=1, verbose=0,
                num_shards=2)
    records = tuning.tune("caser", specs, base, 1, str(tmp_path / "tune"), seed=1, verbose=0)
    (record,) = records
    assert record["state"] == "complete"
    metrics = json.loads(open(os.path.join(record["model_dir"], "metrics.json")).read())
    assert record["value"] == metrics["valid"]["mrr@10"] and metrics["epochs_run"] == 1
    assert set(metrics["caser_metrics"]["test"]) >= {"map"} and os.path.isdir(metrics["export_dir"])
    config = json.loads(open(os.path.join(record["model_dir"], "job_config.json")).read())
    assert config["caser"]["L"] == 5 and config["caser"]["nv"] == record["params"]["nv"]  # Caser's own L, the searched nv
    assert len(_rows((tmp_path / "tune" / "results.md").read_text())) == 1


def test_coerce_types_settings_of_optional_fields_only_where_they_spell_a_number():
    from peterrec.recipes.miir import MIIRConfig
    from peterrec.settings import coerce

    assert coerce(MIIRConfig, "patience", "5", "here") == 5 and coerce(MIIRConfig, "rating_threshold", "4", "here") == 4
    assert coerce(MIIRConfig, "pretrained", "checkpoints/pretrain-miir", "here") == "checkpoints/pretrain-miir"
    assert coerce(MIIRConfig, "tf_config", '{"task": {"index": 1}}', "here") == '{"task": {"index": 1}}'
    assert coerce(MIIRConfig, "epochs", "12", "here") == 12

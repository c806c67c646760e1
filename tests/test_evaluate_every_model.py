"""``pipelines.evaluate`` and ``pipelines.predict`` work on an export of every model (issue #15).

Each model trains one epoch on a tiny set through its recipe (what ``pipelines.train --model <name>`` runs);
re-evaluating the export with the job's own data must give the job's test metrics, which needs each model's
own evaluation rows (Caser's carry the user, ATRank's time buckets and negatives), and batch prediction must
rank items for every user.
"""

import csv

import pytest

from peterrec import recipes
from peterrec.evaluation import evaluate_export
from peterrec.inference import predict_file

DAY = 86400
SETTINGS = {
    "nextitnet": dict(embedding_dim=8, dilations=(1, 2), max_len=8, stride=4),
    "grec": dict(embedding_dim=8, dilations=(1, 2), max_len=8, stride=4),
    "sasrec": dict(embedding_dim=8, max_len=8, stride=4, num_heads=2),
    "narm": dict(embedding_dim=8, max_len=8, stride=4),
    "stamp": dict(embedding_dim=8, max_len=8, stride=4),
    "gru4rec": dict(embedding_dim=8, max_len=8, stride=4),
    "bert4rec": dict(embedding_dim=8, max_len=8, stride=4, num_heads=2, inner_size=16),
    "caser": dict(max_len=3, T=1, embedding_dim=8, nh=2, nv=2, batch_size=32),
    "atrank": dict(embedding_dim=8, field_dim=8, num_heads=2, batch_size=16, item_fields=("category",)),
    "casr": dict(embedding_dim=8, max_len=8, stride=4),  # narm sampler -> stamp anchor; the export is the anchor
    "miir": dict(embedding_dim=8, num_heads=2, num_layers=1, inner_size=16, batch_size=16, max_len=8, item_fields=("category",)),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("every_model")
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"u{u}\ti{(u * 3 + t) % 25}\t{t * DAY}" for u in range(30) for t in range(8)]
    (tmp / "d.inter").write_text("\n".join(lines) + "\n")
    (tmp / "d.item").write_text("item_id:token\tcategory:token\n" + "".join(f"i{k}\tc{k % 4}\n" for k in range(25)))
    return tmp


@pytest.mark.parametrize("model", SETTINGS)
def test_evaluate_and_predict_reproduce_the_job(tiny, tmp_path, model):
    recipe = recipes.get(model)
    common = dict(data=str(tiny / "d.inter"), tfrecord_dir=str(tiny / "tfr"), model_dir=str(tmp_path / "run"), num_shards=1,
                  epochs=1, verbose=0, seed=3)
    if recipe.layout in ("candidate_pairs", "mii_cells"):
        common["item_data"] = str(tiny / "d.item")
    metrics = recipe.run(recipe.config(common | SETTINGS[model]))
    again = evaluate_export(str(tmp_path / "run"), split="test", tfrecord_dir=str(tiny / "tfr"), output=str(tmp_path / "eval.json"))
    assert again["test"]["users"] == metrics["test"]["users"] == 30
    for key in ("hr@10", "ndcg@10", "mrr@10"):
        assert again["test"][key] == pytest.approx(metrics["test"][key], abs=1e-6), (model, key, again["test"], metrics["test"])
        assert again["popularity"]["hr@10"] == pytest.approx(metrics["popularity"]["test"]["hr@10"], abs=1e-6)
    out = predict_file(metrics["export_dir"], str(tiny / "d.inter"), output=str(tmp_path / "predictions.csv"), top_k=3)
    with open(out["output"]) as f:
        rows = list(csv.DictReader(f))
    assert out["users"] == 30 and len(rows) == 90 and {row["rank"] for row in rows} == {"1", "2", "3"}
    assert all(row["item"].startswith("i") for row in rows)  # real items, never a reserved token

"""Serving: the HTTP endpoint answers what the export answers, rejects bad requests and keeps serving;
the SavedModel serves without peterrec or Keras."""

import http.client
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from peterrec import export, serving
from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, ExportError
from peterrec.tasks.next_item import NextItemTask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = [f"i{n}" for n in range(30)] + ["42"]
TOP_K = 12


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """An export of a small random NextItNet (serving is tested against the export, not its quality)."""
    keras.utils.set_random_seed(3)
    vocab = Vocabulary(TOKENS, counts=list(range(len(TOKENS), 0, -1)))
    task = NextItemTask(NextItNetBackbone(vocabulary_size=vocab.size, embedding_dim=8, dilations=[1, 2]))
    model_dir = tmp_path_factory.mktemp("serving") / "model"
    return export.export_model(task, vocab, str(model_dir), max_len=6, top_k=TOP_K)


@pytest.fixture(scope="module")
def loaded(tiny_export):
    return export.load_export(tiny_export)


@pytest.fixture(scope="module")
def server(tiny_export):
    srv = serving.make_server(os.path.dirname(tiny_export), port=0, max_batch=4, max_len=20)
    serving.serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def _request(srv, method, path, body=None, raw=None):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_health_names_the_served_version(server, tiny_export):
    status, health = _request(server, "GET", serving.HEALTH_PATH)
    assert status == 200
    config = json.load(open(os.path.join(tiny_export, "config.json")))
    assert health["model_version"] == 1 and health["vocab_hash"] == config["vocab_hash"]
    assert health["top_k"] == TOP_K and health["max_len"] == 6
    assert health["signatures"] == ["serving_default", "top_k_exclude_seen"]


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_answers_equal_the_loaded_export(server, loaded, exclude_seen):
    sequences = [["i1", "i2", "i3"], ["i5", "nope", "i5", "i9", "i1", "i2", "i3", "i4"], ["i7"]]
    status, out = _request(server, "POST", serving.RECOMMEND_PATH, {"sequences": sequences, "k": 5, "exclude_seen": exclude_seen})
    assert status == 200
    expected = loaded.recommend(sequences, top_k=5, exclude_seen=exclude_seen)
    assert out["items"] == [[item for item, _ in row] for row in expected]
    np.testing.assert_allclose(out["scores"], [[score for _, score in row] for row in expected], rtol=1e-5, atol=1e-6)
    assert out["unknown_ids"] == [[], ["nope"], []]
    assert out["model_version"] == 1
    if exclude_seen:
        assert all(not set(items) & set(seq) for items, seq in zip(out["items"], sequences))


def test_integer_ids_and_defaults(server, loaded):
    status, out = _request(server, "POST", serving.RECOMMEND_PATH, {"sequences": [[42, "i3"]]})
    assert status == 200 and "unknown_ids" not in out
    expected = loaded.recommend([["42", "i3"]], top_k=serving.DEFAULT_K)
    assert out["items"] == [[item for item, _ in row] for row in expected]


BAD_REQUESTS = [
    (None, b"{not json", 400, "not valid JSON"),
    ([["i1"]], None, 400, "JSON object"),
    ({"sequences": []}, None, 400, "non-empty list"),
    ({"sequences": "i1 i2"}, None, 400, "non-empty list"),
    ({"sequences": [["i1"], []]}, None, 400, "sequences[1] is empty"),
    ({"sequences": [["i1", ""]]}, None, 400, "sequences[0][1]"),
    ({"sequences": [["i1", 2.5]]}, None, 400, "sequences[0][1]"),
    ({"sequences": [["i1", True]]}, None, 400, "sequences[0][1]"),
    ({"sequences": ["i1"]}, None, 400, "sequences[0] must be a list"),
    ({"sequences": [["i1"]], "k": 0}, None, 400, "'k' must be an integer in [1, 12]"),
    ({"sequences": [["i1"]], "k": TOP_K + 1}, None, 400, "'k'"),
    ({"sequences": [["i1"]], "k": "5"}, None, 400, "'k'"),
    ({"sequences": [["i1"]], "exclude_seen": "yes"}, None, 400, "exclude_seen"),
    ({"sequences": [["i1"]], "top_k": 3}, None, 400, "unknown field(s) top_k"),
    ({"sequences": [["i1"]] * 5}, None, 413, "at most 4 (--max_batch)"),
    ({"sequences": [["i1"] * 21]}, None, 413, "at most 20 (--max_len)"),
    ({"sequences": [["i1"], ["x", "y"]]}, None, 422, "sequences[1]: none of its 2 item id(s) is known"),
]


def test_bad_requests_get_one_clear_4xx_and_the_server_keeps_serving(server):
    good = {"sequences": [["i1", "i2"]], "k": 3}
    for body, raw, status, message in BAD_REQUESTS:
        got, payload = _request(server, "POST", serving.RECOMMEND_PATH, body, raw)
        assert (got, message in payload.get("error", "")) == (status, True), (body or raw, got, payload)
        ok, out = _request(server, "POST", serving.RECOMMEND_PATH, good)
        assert ok == 200 and len(out["items"][0]) == 3
    assert _request(server, "GET", "/v2/nothing")[0] == 404
    assert _request(server, "GET", serving.RECOMMEND_PATH)[0] == 405
    assert _request(server, "POST", serving.HEALTH_PATH, good)[0] == 405


def _raw_post(srv, headers):
    """A POST with exactly ``headers`` and no body (http.client would add a Content-Length); returns (status, payload)."""
    import socket

    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall((f"POST {serving.RECOMMEND_PATH} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                      + "\r\n").encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def test_no_content_length_is_411_and_an_oversize_body_is_413_unread(server):
    good = {"sequences": [["i1", "i2"]], "k": 3}
    status, payload = _raw_post(server, {"Content-Type": "application/json"})
    assert status == 411 and "Content-Length header is required" in payload["error"]
    status, payload = _raw_post(server, {"Content-Length": "12abc"})
    assert status == 411
    too_big = serving.MAX_BODY_BYTES + 1
    status, payload = _raw_post(server, {"Content-Length": str(too_big)})  # the body is never sent: the server must not wait for it
    assert status == 413 and f"the body has {too_big} bytes; at most {serving.MAX_BODY_BYTES}" in payload["error"]
    ok, out = _request(server, "POST", serving.RECOMMEND_PATH, good)
    assert ok == 200 and len(out["items"][0]) == 3


@pytest.fixture(scope="module")
def finetuned_export(mini_world, tmp_path_factory):
    """A finetuned (PeterRec, target-domain) export of a tiny pretrained NextItNet."""
    from peterrec import finetuning, pretraining

    tmp = tmp_path_factory.mktemp("serve-fine")
    tiny = dict(epochs=1, embedding_dim=8, dilations=(1, 2), max_len=20, batch_size=64, verbose=0, num_shards=2)
    pre = pretraining.run(pretraining.PretrainConfig(data=str(mini_world / "source.inter"), tfrecord_dir=str(tmp / "tfr"),
                                                     model_dir=str(tmp / "pre"), **tiny))
    fine = finetuning.run(finetuning.FinetuneConfig(pretrained=pre["export_dir"], data=str(mini_world / "source.inter"),
                                                    targets=str(mini_world / "target.inter"), tfrecord_dir=str(tmp / "tfr"),
                                                    model_dir=str(tmp / "fine"), epochs=1, verbose=0, num_shards=2))
    return fine["export_dir"]


def test_http_serves_a_finetuned_export(finetuned_export, mini_world):
    loaded = export.load_export(finetuned_export)
    rows = [line.split("\t") for line in open(mini_world / "source.inter").read().splitlines()[1:200]]
    sequences = [[item for user, item, _ in rows if user == u] for u in sorted({r[0] for r in rows})[:3]]
    srv = serving.make_server(os.path.dirname(finetuned_export), port=0, max_batch=4, max_len=200)
    serving.serve_in_thread(srv)
    try:
        status, health = _request(srv, "GET", serving.HEALTH_PATH)
        assert status == 200 and health["vocab_hash"] == json.load(open(os.path.join(finetuned_export, "config.json")))["vocab_hash"]
        status, out = _request(srv, "POST", serving.RECOMMEND_PATH, {"sequences": sequences, "k": 5})
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 200, out
    expected = loaded.recommend(sequences, top_k=5)
    assert out["items"] == [[item for item, _ in row] for row in expected]
    assert all(item.startswith("t") for row in out["items"] for item in row)  # target-domain items, not source items
    np.testing.assert_allclose(out["scores"], [[score for _, score in row] for row in expected], rtol=1e-5, atol=1e-6)


BLOCKED_IMPORT = r"""
import json, sys

# Serving must not need the project or Keras: with None in sys.modules, `import keras` raises
# ModuleNotFoundError and importlib.util.find_spec answers None, as if they were not installed.
for name in ("peterrec", "pipelines", "keras", "tf_keras"):
    sys.modules[name] = None
import tensorflow as tf
try:
    import peterrec  # noqa: F401
    raise SystemExit("the import block does not work")
except ImportError:
    pass

served = tf.saved_model.load(sys.argv[1])
rows = tf.constant(json.loads(sys.argv[2]))
out = {}
for name in ("serving_default", "top_k_exclude_seen"):
    result = served.signatures[name](item_ids=rows)
    out[name] = {"ids": [[i.decode() for i in r] for r in result["top_k_ids"].numpy()], "scores": result["top_k_scores"].numpy().tolist()}
out["modules"] = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in ("peterrec", "keras") and mod is not None)
print(json.dumps(out))
"""


def test_saved_model_serves_in_a_process_that_cannot_import_peterrec_or_keras(tiny_export, loaded):
    rows = [["i1", "i2", "i3", ""], ["i4", "unknown", "i4", "i8"]]  # "" pads
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, tiny_export, json.dumps(rows)], capture_output=True, text=True, env=env, timeout=180,
        cwd=os.path.dirname(tiny_export),  # not the repository: `peterrec` is not importable from the working directory
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    sequences = [[item for item in row if item] for row in rows]
    for name, exclude_seen in (("serving_default", False), ("top_k_exclude_seen", True)):
        expected = loaded.recommend(sequences, top_k=TOP_K, exclude_seen=exclude_seen)
        assert out[name]["ids"] == [[item for item, _ in row] for row in expected]
        np.testing.assert_allclose(out[name]["scores"], [[s for _, s in row] for row in expected], rtol=1e-5, atol=1e-6)


def test_a_missing_export_or_a_busy_port_is_one_clear_error(server, tmp_path):
    with pytest.raises(ExportError, match="is not an export directory"):
        serving.make_server(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="--port"):
        serving.make_server(server.recommender.path, port=server.server_address[1])


def test_cli_serves_and_stops_on_sigterm(tiny_export):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.serve", "--export", tiny_export, "--port", "0"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True,
    )
    try:
        line = proc.stdout.readline()  # "serving <export> (...) on http://127.0.0.1:<port>: ..."
        assert "on http://127.0.0.1:" in line, line + proc.stderr.read()[-2000:] if proc.poll() is not None else line
        port = int(line.split("http://127.0.0.1:")[1].split(":")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", serving.RECOMMEND_PATH, body=json.dumps({"sequences": [["i1"]], "k": 2}))
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["items"][0]) == 2
        conn.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "server stopped" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

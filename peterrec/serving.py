"""A small HTTP JSON endpoint over an export's SavedModel signatures (standard library only).

``python -m pipelines.serve --export checkpoints/pretrain-nextitnet/export --port 8080``

* ``POST /v1/recommend`` with ``{"sequences": [["i1", "i2"], ...], "k": 10,
  "exclude_seen": true}`` answers ``{"items": [[...]], "scores": [[...]],
  "model_version": 1}`` (best first), plus ``"unknown_ids": [[...], ...]``
  (per sequence, in input order) when some input ids are not in the
  export's vocabulary: they are scored as the out-of-vocabulary id, as the
  signature does. ``k`` defaults to 10 and may be at most the export's
  ``top_k``; ``exclude_seen`` (default false) never returns an input item.
  Item ids are JSON strings (integers are accepted and read as their decimal
  text).
* ``GET /v1/health``: ``{"status": "ok", "model_version", "vocab_hash",
  "top_k", "max_len", "signatures", "export"}``.

Errors are JSON ``{"error": message}`` with a 4xx status, and the server goes
on serving: 400 malformed JSON, a missing or mistyped field, an empty
sequence or item, ``k`` out of range, ``exclude_seen`` on an export without
that signature; 404 unknown path; 405 wrong method; 411 no Content-Length;
413 more than ``max_batch`` sequences, a sequence longer than ``max_len``
items, or a body over ``MAX_BODY_BYTES``; 422 a sequence none of whose ids
is known (there is nothing to recommend from). A failure inside the model is
a 500 with the message (and the traceback on stderr).

Only ``tf.saved_model.load`` and the export's ``config.json`` /
``vocab.json`` are used, never the Keras model, so any export version serves
(pretrained next-item models and finetuned target scorers alike).
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import traceback

import tensorflow as tf

from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, ExportError, PeterRecError, VocabularyError
from peterrec.export import CONFIG_FILE, VOCAB_FILE, latest_export, read_config

RECOMMEND_PATH = "/v1/recommend"
HEALTH_PATH = "/v1/health"
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_K = 10
SERVING_PAD = ""  # the signature's padding string (peterrec.features.SERVING_PAD)


class RequestError(PeterRecError):
    """A bad request: ``status`` is the HTTP status to answer with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = int(status)


class SavedModelRecommender:
    """Top-k answers from an export's SavedModel signatures, with request validation.

    Args:
        export_path: an export root (``.../export``), a model dir or one
            version directory; a root serves its newest version.
        max_batch: most sequences per request.
        max_len: most items per sequence (the model itself uses the most
            recent ``config.json`` ``max_len`` of them as context;
            ``exclude_seen`` covers all of them).
    """

    def __init__(self, export_path, *, max_batch=256, max_len=1000):
        self.path = latest_export(export_path)
        self.config = read_config(self.path)
        name = os.path.basename(os.path.normpath(self.path))
        self.version = int(name) if name.isdigit() else None
        self.vocab = Vocabulary.load(os.path.join(self.path, VOCAB_FILE))
        if self.vocab.hash != self.config.get("vocab_hash"):
            raise VocabularyError(f"{self.path}: {VOCAB_FILE} hash {self.vocab.hash[:12]} differs from {CONFIG_FILE}'s")
        self.known = frozenset(self.vocab.tokens)
        self.top_k = int(self.config["serving"]["top_k"])
        self.max_batch, self.max_len = int(max_batch), int(max_len)
        if self.max_batch < 1 or self.max_len < 1:
            raise ConfigError(f"--max_batch and --max_len must be >= 1, got {max_batch} and {max_len}")
        try:
            self._loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ExportError(f"{self.path}: cannot load the SavedModel ({err})") from err
        self.signatures = {name: self._loaded.signatures[name] for name in self._loaded.signatures}
        if "serving_default" not in self.signatures:
            raise ExportError(f"{self.path}: the SavedModel has no serving_default signature")

    def health(self):
        return {
            "status": "ok",
            "model_version": self.version,
            "export": self.path,
            "vocab_hash": self.vocab.hash,
            "top_k": self.top_k,
            "max_len": int(self.config["max_len"]),
            "max_batch": self.max_batch,
            "max_sequence_items": self.max_len,
            "signatures": sorted(self.signatures),
        }

    def parse(self, payload):
        """Check a decoded request body; returns ``(sequences, k, exclude_seen)`` or raises RequestError."""
        if not isinstance(payload, dict):
            raise RequestError(400, f"the body must be a JSON object with 'sequences', got {type(payload).__name__}")
        unknown_fields = sorted(set(payload) - {"sequences", "k", "exclude_seen"})
        if unknown_fields:
            raise RequestError(400, f"unknown field(s) {', '.join(unknown_fields)}; expected sequences, k, exclude_seen")
        sequences = payload.get("sequences")
        if not isinstance(sequences, list) or not sequences:
            raise RequestError(400, "'sequences' must be a non-empty list of item-id lists")
        if len(sequences) > self.max_batch:
            raise RequestError(413, f"{len(sequences)} sequences in one request; at most {self.max_batch} (--max_batch)")
        k = payload.get("k", DEFAULT_K)
        if not _is_int(k) or not 1 <= k <= self.top_k:
            raise RequestError(400, f"'k' must be an integer in [1, {self.top_k}] (the export serves {self.top_k}), got {k!r}")
        exclude_seen = payload.get("exclude_seen", False)
        if not isinstance(exclude_seen, bool):
            raise RequestError(400, f"'exclude_seen' must be true or false, got {exclude_seen!r}")
        if exclude_seen and "top_k_exclude_seen" not in self.signatures:
            raise RequestError(400, "'exclude_seen' is not available: this export scores targets, not next items of the input")
        rows = []
        for i, seq in enumerate(sequences):
            if not isinstance(seq, list):
                raise RequestError(400, f"sequences[{i}] must be a list of item ids, got {type(seq).__name__}")
            if not seq:
                raise RequestError(400, f"sequences[{i}] is empty; send at least one item id")
            if len(seq) > self.max_len:
                raise RequestError(413, f"sequences[{i}] has {len(seq)} items; at most {self.max_len} (--max_len)")
            row = []
            for j, item in enumerate(seq):
                if _is_int(item):
                    item = str(item)
                if not isinstance(item, str) or item == SERVING_PAD:
                    raise RequestError(400, f"sequences[{i}][{j}] must be a non-empty string item id, got {item!r}")
                row.append(item)
            rows.append(row)
        return rows, k, exclude_seen

    def recommend(self, sequences, k=DEFAULT_K, exclude_seen=False):
        """Top-``k`` items and scores per sequence (validated lists of strings), and the unknown ids."""
        unknown = [[item for item in seq if item not in self.known] for seq in sequences]
        for i, (seq, missing) in enumerate(zip(sequences, unknown)):
            if len(missing) == len(seq):
                raise RequestError(422, f"sequences[{i}]: none of its {len(seq)} item id(s) is known to the model (e.g. {seq[0]!r})")
        width = max(len(seq) for seq in sequences)
        batch = tf.constant([seq + [SERVING_PAD] * (width - len(seq)) for seq in sequences], dtype=tf.string)
        fn = self.signatures["top_k_exclude_seen" if exclude_seen else "serving_default"]
        out = fn(item_ids=batch)
        items = [[i.decode() for i in row[:k]] for row in out["top_k_ids"].numpy()]
        scores = [[float(s) for s in row[:k]] for row in out["top_k_scores"].numpy()]
        response = {"items": items, "scores": scores, "model_version": self.version}
        if any(unknown):
            response["unknown_ids"] = unknown
        return response

    def handle(self, body):
        """Answer one ``/v1/recommend`` body (bytes): ``(status, payload)``."""
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(400, f"the body is not valid JSON ({err})") from err
        return 200, self.recommend(*self.parse(payload))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "peterrec-serve"
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    disable_nagle_algorithm = True  # headers and body are two writes: without TCP_NODELAY each answer waits ~40 ms for an ACK

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status, message):
        self._send(status, {"error": message})

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == HEALTH_PATH:
            self._send(200, self.server.recommender.health())
        elif self.path == RECOMMEND_PATH:
            self._error(405, f"use POST for {RECOMMEND_PATH}")
        else:
            self._error(404, f"no such path {self.path!r}; use POST {RECOMMEND_PATH} or GET {HEALTH_PATH}")

    def do_POST(self):  # noqa: N802
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return self._error(411, "a Content-Length header is required")
        length = int(length)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            return self._error(413, f"the body has {length} bytes; at most {MAX_BODY_BYTES}")
        body = self.rfile.read(length)
        if self.path == HEALTH_PATH:
            return self._error(405, f"use GET for {HEALTH_PATH}")
        if self.path != RECOMMEND_PATH:
            return self._error(404, f"no such path {self.path!r}; use POST {RECOMMEND_PATH} or GET {HEALTH_PATH}")
        try:
            status, payload = self.server.recommender.handle(body)
        except RequestError as err:
            return self._error(err.status, str(err))
        except Exception as err:  # noqa: BLE001  (a fault in the model must not stop the server; it is logged)
            traceback.print_exc(file=sys.stderr)
            return self._error(500, f"internal error: {type(err).__name__}: {err}")
        self._send(status, payload)

    def log_message(self, format, *args):  # noqa: A002
        if self.server.access_log:
            super().log_message(format, *args)


class RecommendServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server answering with a :class:`SavedModelRecommender`.

    ``shutdown()`` stops accepting; ``server_close()`` waits for requests in
    flight (non-daemon handler threads).
    """

    daemon_threads = False
    block_on_close = True

    def __init__(self, recommender, host="127.0.0.1", port=0, access_log=False):
        super().__init__((host, port), _Handler)
        self.recommender = recommender
        self.access_log = access_log

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(export_path, *, host="127.0.0.1", port=0, max_batch=256, max_len=1000, access_log=False):
    """Load an export and bind a :class:`RecommendServer` (port 0: a free one); call ``serve_forever()``."""
    recommender = SavedModelRecommender(export_path, max_batch=max_batch, max_len=max_len)
    try:
        return RecommendServer(recommender, host, port, access_log)
    except OSError as err:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({err})") from err


def serve_in_thread(server):
    """Run ``server.serve_forever`` in a background thread (tests, notebooks); returns the thread."""
    thread = threading.Thread(target=server.serve_forever, name="peterrec-serve", daemon=True)
    thread.start()
    return thread

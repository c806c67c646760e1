"""Serve an export over HTTP: raw item-id sequences in, top-k item ids and scores out.

    python -m pipelines.serve --export checkpoints/pretrain-nextitnet/export --port 8080
    curl -s localhost:8080/v1/recommend -d '{"sequences": [["i00042", "i01337"]], "k": 5, "exclude_seen": true}'
    curl -s localhost:8080/v1/health

The newest version under --export is loaded with tf.saved_model.load (the
signatures, not the Keras model). Bad requests get a 4xx JSON error and the
server keeps serving; SIGTERM or Ctrl-C stops accepting, lets requests in
flight finish and exits 0. See peterrec/serving.py for the request format.
"""

import signal
import sys
import threading

from absl import flags

from pipelines import flags as common

flags.DEFINE_string("export", "checkpoints/pretrain-nextitnet/export", "Export root, model dir or version directory to serve.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 8080, "Port to listen on (0: a free port, printed at start).", lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("max_batch", 256, "Most sequences per request (more: HTTP 413).", lower_bound=1)
flags.DEFINE_integer(
    "max_len", 1000,
    "Most items per request sequence (more: HTTP 413). The model uses the export's max_len most recent items as context.",
    lower_bound=1,
)
flags.DEFINE_bool("access_log", False, "Log every request to stderr.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from peterrec import serving

    server = serving.make_server(
        FLAGS.export, host=FLAGS.host, port=FLAGS.port, max_batch=FLAGS.max_batch, max_len=FLAGS.max_len, access_log=FLAGS.access_log
    )

    def stop(signum, frame):
        # shutdown() waits for serve_forever to return, so it must run outside this (the serving) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    health = server.recommender.health()
    print(
        f"serving {health['export']} (version {health['model_version']}, top_k {health['top_k']}) "
        f"on {server.url}: POST {serving.RECOMMEND_PATH}, GET {serving.HEALTH_PATH}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()  # waits for requests in flight
    print("server stopped", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    common.run(main)

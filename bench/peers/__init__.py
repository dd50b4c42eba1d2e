"""Peer comparison for ``bench/bench_serving.py``: benchmark environments (:mod:`envs`), the
servers run inside them (``servers/``), start/stop targets (:mod:`targets`) and the one v2
gRPC load client used for every target (:mod:`client`)."""

"""`serve`: a model directory on uvicorn (what `kerasformers serve` runs)."""

from kerasformers.serving.app import DEFAULTS, create_app


def serve(
    path,
    host="127.0.0.1",
    port=8000,
    max_batch_size=DEFAULTS["max_batch_size"],
    max_wait_ms=DEFAULTS["max_wait_ms"],
    queue_size=DEFAULTS["queue_size"],
    timeout_s=DEFAULTS["timeout_s"],
    max_body_bytes=DEFAULTS["max_body_bytes"],
    application=None,
    pool="mean",
    normalize=True,
    graceful_timeout_s=30.0,
    log_level="info",
):
    """Serve a model directory (or a list of them) over HTTP until interrupted.

    Binds 127.0.0.1 by default (pass host="0.0.0.0" to be reachable from other machines).
    On SIGINT/SIGTERM it stops accepting connections, answers the requests in flight (up
    to graceful_timeout_s), then exits. The other arguments are `create_app`'s.

    Example (blocks; then open http://127.0.0.1:8000/ or use curl):

        from kerasformers.serving import serve
        serve("path/to/bert_dir", port=8000, max_batch_size=32, max_wait_ms=5)
    """
    import uvicorn

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    app = create_app(
        path,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        timeout_s=timeout_s,
        max_body_bytes=max_body_bytes,
        application=application,
        pool=pool,
        normalize=normalize,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout_s,
        access_log=False,
    )

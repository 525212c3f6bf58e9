"""dengine.http: the optional HTTP face of a node (docs/http.md).

``/metrics`` (Prometheus text), ``/health`` (etcd's rule and shape),
``/livez``, ``/readyz``, ``/status.json`` and a live cluster page at ``/``.
``dengine serve`` answers it on ``server.metrics_address`` (127.0.0.1:9082
unless set; ``off`` turns it off); an embedded engine serves it only when
the application asks::

    from dengine.http import open_http_server

    async with dengine.open_engine("./data") as engine, open_http_server(engine, "127.0.0.1:9082"):
        ...
"""

from dengine.http.server import DEFAULT_HTTP_ADDRESS, HttpOptions, HttpServer, open_http_server, serve_http

__all__ = ["DEFAULT_HTTP_ADDRESS", "HttpOptions", "HttpServer", "open_http_server", "serve_http"]

"""``GET /metrics`` (HOME-801): the app's own Prometheus registry; open on a loopback bind,
behind the token on any other (``server.metrics_auth``, HARD-112)."""

from __future__ import annotations

import falcon.asgi
from prometheus_client.exposition import choose_encoder

from orchestratord.metrics import Metrics


class MetricsResource:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        encoder, content_type = choose_encoder(req.get_header("Accept") or "")
        resp.content_type = content_type
        resp.data = encoder(self.metrics.registry)

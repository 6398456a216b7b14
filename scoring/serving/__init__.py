"""The HTTP side: where a request is parsed, scored and answered.

``fastpath`` (the score endpoints as plain ASGI) -> ``dataplane`` (decode, limits, pick the
model, score, encode) with ``schemas`` (msgspec bodies, errors naming the field); ``app``
(``create_app``: the other routes), ``auth``, ``openapi``, ``settings`` (``CTR_*``), ``metrics``,
``logs``; ``cli`` (``ctr-serve``) and ``wiring`` (the composition root: the only module that puts
the registry, the TF Serving leg and the in-process syncer together).
"""

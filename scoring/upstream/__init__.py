"""Models scored elsewhere (TensorFlow Serving) and the traffic split between models.

``config`` (the models config file), ``payload`` (tensors and JSON bodies, no I/O), ``client``
(the async REST client: sub-batches, deadline, retry), ``breaker``, ``scorer`` (a TF Serving
model with its native fallback), ``routing`` (xxh64 buckets), ``experiments`` (the per-arm route
of ``POST /v1/score``), ``metrics``, ``setup`` (config -> registry entries and route). Uses
:mod:`scoring.engine` (request validation and hashing) and :mod:`scoring.lifecycle`.
"""

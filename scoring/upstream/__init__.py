"""Models scored elsewhere (TensorFlow Serving) and the traffic split between models.

``config`` + ``reader`` (the models config file), ``payload`` (tensors and JSON bodies, no I/O),
``client`` (the async REST client: sub-batches, deadline, retry), ``breaker``, ``scorer`` (a TF
Serving model with its native fallback); the split: ``layers`` (experiment layers, the exclusive
domain and launch layer in the config), ``assign`` (a request's arms and parameters),
``routing`` (xxh64 buckets), ``pins`` (pinned model versions, the ``@next`` canary), ``srm``
(the sample-ratio check), ``experiments`` (the route of ``POST /v1/score``), ``watch`` (the config
reloaded on change); ``metrics``, ``setup`` (config -> registry entries and route). Uses
:mod:`scoring.engine` (request validation and hashing) and :mod:`scoring.lifecycle`.
"""

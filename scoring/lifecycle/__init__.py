"""Where a model version lives and how it goes live.

``repo`` (the local repository: versions, ``.state.json``, atomic install, prune), ``loader``
(:class:`LiveModel`, and a package -> validated, warm engine), ``registry`` (follow the
repository: load -> validate -> warm -> swap one reference; reload, rollback). Uses
:mod:`scoring.model` and :mod:`scoring.engine`; knows nothing of HTTP.
"""

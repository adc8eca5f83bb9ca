"""fitfed: NVIDIA FLARE application bundle for cross-silo health federations.

The data's path through the package: a site's CSV is checked against a task spec
(:mod:`fitfed.spec`, :mod:`fitfed.validation`), turned into tensors with the site's own
statistics (:mod:`fitfed.preprocessing`), trained locally (:mod:`fitfed.task`, driven by
:mod:`fitfed.client` inside FLARE), aggregated by an NVFlare recipe (:mod:`fitfed.jobs`),
and recorded with the global model on the server (:mod:`fitfed.server.run_record`).
"""

__version__ = "0.1.0"

"""Robust aggregation for fitfed jobs: median, trimmed mean, Krum, Multi-Krum and norm bounding.

- :mod:`fitfed.aggregation.robust`: the rules as pure numpy functions.
- :mod:`fitfed.aggregation.config`: the typed choice a job makes (``JobSettings.aggregator``).
- :mod:`fitfed.aggregation.rules`: the registry from method name to rule.
- :mod:`fitfed.aggregation.round`: one round over named club updates, with its report.
- :mod:`fitfed.aggregation.aggregator`: ``RobustAggregator``, the NVFlare component.
- :mod:`fitfed.aggregation.summary`: per-club counts over a run's reports, for the job summary.

Code inside fitfed imports the submodules directly: FLARE copies a job's custom code by
following ``from fitfed.x.y import`` lines, and would not find names re-exported here.
"""

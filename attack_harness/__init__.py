"""An attack harness for tests and benchmarks ONLY: make chosen clubs send poisoned updates.

Nothing here is part of the ``fitfed`` package, so no production job folder (``fitfed jobs
export``) and no site kit contains it; fitfed's own client script and configs have no attack
setting at all. Only the test suite and ``benchmarks/`` wire it in:

- :mod:`attack_harness.poison`: the attacks (sign flip with a scale, Gaussian noise, label flip).
- :mod:`attack_harness.filter`: a FLARE task-result filter that poisons chosen sites' updates in
  NVFlare's simulator.
- :mod:`attack_harness.harness`: builds an attacked simulator job from a fitfed job definition.

It is a top-level folder rather than ``benchmarks/attacks`` because NVFlare's simulator loads the
filter by module path in its own process, where ``benchmarks`` is already taken: opacus (the
``privacy`` extra) installs a top-level ``benchmarks`` package into site-packages.
"""

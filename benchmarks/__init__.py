"""fitfed's benchmarks: run from the repository root, e.g. ``python -m benchmarks.robustness``.

Not part of the installed ``fitfed`` package, and never shipped in a job folder or a site kit.
"""

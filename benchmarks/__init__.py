"""PluginGuard's benchmarks: each figure measured beside its floor, on the same machine,
in the same run. ``python -m benchmarks.run`` (or ``make bench``) runs them all."""

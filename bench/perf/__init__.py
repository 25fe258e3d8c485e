"""The throughput and memory regression suite (``make perf`` / ``make perf-check``).

``workload`` holds the fixed synthetic workload and how one cell is run and
measured; ``test_perf`` is the pytest-benchmark suite over it; ``thresholds.json``
the per-benchmark limits that ``ctxbench.bench.perf.check`` applies.
"""

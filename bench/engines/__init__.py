"""One workload script per engine; each prints one ``BENCH-RESULT {json}`` line."""

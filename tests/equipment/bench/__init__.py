"""bridge's benchmark harness (``make bench``): workloads, paths, report. See scripts/bench."""

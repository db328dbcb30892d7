"""The suites that need the real cluster; the cluster itself is equipment, in
tests/equipment/realcluster."""

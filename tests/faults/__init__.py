"""The fault suite's tests; the suite and its probes are equipment, in tests/equipment/faults."""

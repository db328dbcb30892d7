"""The benchmark harness's tests: smoke runs of its paths, the link emulator, start-up and the
WAN profile. The harness itself is equipment, in tests/equipment/bench."""

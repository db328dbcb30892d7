"""Bytes between the laptop and the proxy pod: the port-forward, the SSH tunnel, outbound
traffic."""

"""Pure decisions: what a Deployment, a pod, a lock or a session state means, and what to do
about it. No I/O (the import contracts in pyproject.toml keep it so)."""

"""bridge: swap a Kubernetes Deployment for a process on this machine."""

# The one place of the version: pyproject.toml reads it (tool.setuptools.dynamic), `bridge
# --version` prints it without importing package metadata.
__version__ = "0.1.0"

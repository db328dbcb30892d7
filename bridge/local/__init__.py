"""The laptop side: environment and env files, the child process, signals, local records,
ports, files, IDE."""

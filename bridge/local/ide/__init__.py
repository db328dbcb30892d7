"""Debugging under a local IDE: where attach mode puts the environment, and the IDE
configurations (`bridge ide vscode`) that start a swap before a debug session and end it after.
"""

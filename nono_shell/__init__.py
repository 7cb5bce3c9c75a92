"""nono-shell: the drop-in shell front. Imports only the standard library: every command pays its start-up."""

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic), setup.py
# compiles it into the C client, nono_supervisor re-exports it.
__version__ = "0.1.0"

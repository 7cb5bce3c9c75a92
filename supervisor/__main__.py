"""``python -m nono_supervisor``: the ``nono-supervisor`` console script, for an environment without it on
PATH (a venv that is not activated, ``pipx run``)."""

from nono_supervisor.cli import main

main()

"""The server's command lifecycle table (server._LIFECYCLE): the runs it allows, and nothing else."""

from __future__ import annotations

import pytest

from nono_shell.protocol import ProtocolError
from nono_supervisor.server import _LIFECYCLE, _Lifecycle

STATES = sorted({state for state, _event in _LIFECYCLE} | set(_LIFECYCLE.values()))
EVENTS = sorted({event for _state, event in _LIFECYCLE})


def _walk(*events: str) -> str:
    life = _Lifecycle()
    for event in events:
        life.on(event)
    return life.state


def test_the_runs_a_command_can_have():
    assert _walk("started", "exited", "finished") == "done"  # one run
    assert _walk("started", "exited", "ask", "declined") == "done"  # --prompt after, nothing granted
    assert _walk("started", "exited", "ask", "granted", "started", "exited") == "done"  # one rerun


def test_a_rerun_is_never_asked_about_again_nor_run_a_third_time():
    life = _Lifecycle()
    for event in ("started", "exited", "ask", "granted", "started", "exited"):
        life.on(event)
    for event in EVENTS:
        with pytest.raises(ProtocolError):
            life.on(event)
    assert life.state == "done"


@pytest.mark.parametrize("state", STATES)
def test_an_unlisted_event_raises_and_keeps_the_state(state):
    for event in EVENTS:
        if (state, event) in _LIFECYCLE:
            continue
        life = _Lifecycle()
        life.state = state
        with pytest.raises(ProtocolError, match=f"no '{event}' in state '{state}'"):
            life.on(event)
        assert life.state == state


def test_done_is_the_only_end_and_every_state_reaches_it():
    assert not any(state == "done" for state, _event in _LIFECYCLE)
    reaches = {"done"}
    while True:
        more = {state for (state, _event), following in _LIFECYCLE.items() if following in reaches}
        if more <= reaches:
            break
        reaches |= more
    assert reaches == set(STATES)

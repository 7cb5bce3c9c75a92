"""The answer reader, sans-IO, byte by byte; the question's escaping; the prompter on a pty of its own.

The replies below are what terminals send to the queries an agent can print (xterm ctlseqs; tmux 3.3a's
XTVERSION reply recorded under tmux here). Each holds letters that today's one-key reader took as answers.
"""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from nono_supervisor.terminal import prompt
from nono_supervisor.terminal.answer import CANCEL, MAX_LINE, NEED_DATA, AnswerReader, Line, interpret
from nono_supervisor.terminal.prompt import GUARD_SECONDS, Prompter, Question, shown

REPLIES = {
    "OSC 11 background colour (ST)": b"\x1b]11;rgb:2828/2a2a/3636\x1b\\",
    "OSC 10 foreground colour (BEL)": b"\x1b]10;rgb:dcdc/dfdf/e4e4\x07",
    "DA1": b"\x1b[?62;22c",
    "DA2": b"\x1b[>1;10;0c",
    "XTVERSION (tmux)": b"\x1bP>|tmux 3.3a\x1b\\",
    "DECRQSS (SGR)": b"\x1bP1$r0;1;4m\x1b\\",
    "title report holding an answer": b"\x1b]lo\ra\rsudo\r\x1b\\",
    "title report holding a C1 ST byte in UTF-8": "\x1b]l\u011co\r\x1b\\".encode(),
    "XTGETTCAP": b"\x1bP1+r736d6b78=1b5b3f3168\x1b\\",
    "APC": b"\x1b_Ga=T;o\r\x1b\\",
    "PM and SOS": b"\x1b^a\r\x1b\\\x1bXs\r\x1b\\",
    "SS3 keys": b"\x1bOA\x1bOs",
    "bracketed paste of an answer": b"\x1b[200~a\r\x1b[201~",
    "bracketed paste holding escapes": b"\x1b[200~\x1b[1mo\r\x1b[201~",
    "charset designation": b"\x1b(B\x1b)0",
    "Alt+a": b"\x1ba",
}


def events(reader: AnswerReader) -> list[object]:
    out = []
    while (event := reader.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def feed_bytewise(data: bytes, reader: AnswerReader | None = None) -> list[object]:
    reader = reader or AnswerReader()
    out = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        out += events(reader)
    return out


@pytest.mark.parametrize("reply", REPLIES.values(), ids=REPLIES.keys())
def test_a_terminal_reply_is_dropped_whole_byte_by_byte(reply):
    reader = AnswerReader()
    for i in range(len(reply)):
        reader.feed(reply[i : i + 1])
        assert reader.next_event() is NEED_DATA, f"an event after byte {i} of {reply!r}"
    assert reader.line == "" and not reader.in_sequence
    # and then a deliberate answer still counts
    assert feed_bytewise(b"o\r", reader) == [Line("o")]


@pytest.mark.parametrize("reply", REPLIES.values(), ids=REPLIES.keys())
def test_a_reply_in_the_middle_of_typing_leaves_the_typed_line(reply):
    assert feed_bytewise(b"s" + reply + b"\r") == [Line("s")]


def test_every_split_of_a_reply_and_an_answer_reads_the_same():
    data = b"".join(REPLIES.values()) + b"d\r"
    for cut in range(len(data) + 1):
        reader = AnswerReader()
        reader.feed(data[:cut])
        got = events(reader)
        reader.feed(data[cut:])
        assert got + events(reader) == [Line("d")], cut


def test_a_line_is_a_letter_and_enter():
    assert feed_bytewise(b"o") == []  # no Enter: need more
    assert feed_bytewise(b"o\r") == [Line("o")]
    assert feed_bytewise(b"o\n") == [Line("o")]
    assert feed_bytewise(b"o\r\n") == [Line("o")]  # CR LF is one Enter
    assert feed_bytewise(b"o\r\r") == [Line("o"), Line("")]  # two Enters
    assert feed_bytewise(b"ls\r") == [Line("ls")]
    assert feed_bytewise(b"ox\x7f\r") == [Line("o")]  # backspace
    assert feed_bytewise(b"ls\x15d\r") == [Line("d")]  # Ctrl-U
    assert feed_bytewise(b"o\x1b[D\r") == [Line("o")]  # an arrow key is skipped


def test_ctrl_c_and_ctrl_d_cancel_in_every_state():
    for prefix in (b"", b"o", b"\x1b", b"\x1b[12", b"\x1b]11;rgb:", b"\x1bP>|", b"\x1b[200~ab"):
        assert feed_bytewise(prefix + b"\x03") == [CANCEL], prefix
        assert feed_bytewise(prefix + b"\x04") == [CANCEL], prefix


def test_control_and_non_ascii_bytes_make_a_line_no_answer():
    for data in (b"o\x01\r", b"o\t\r", "ö\r".encode(), b"\x9b?62c\r", b"\x9d11;?\x9co\r"):
        (line,) = feed_bytewise(data)
        assert interpret(line.text) is None, data


def test_a_cr_inside_a_sequence_is_never_an_enter():
    assert feed_bytewise(b"\x1b[\r\r1m") == []
    assert feed_bytewise(b"\x1b\ro") == []  # ESC, CR swallowed, "o" ends the two-byte escape
    assert feed_bytewise(b"\x1b]2;o\r\x1b\\") == []


def test_idle_drops_a_lone_escape_and_the_line_it_interrupted():
    reader = AnswerReader()
    reader.feed(b"o\x1b")
    assert reader.in_sequence
    reader.idle()
    assert not reader.in_sequence
    reader.feed(b"\r")
    (line,) = events(reader)
    assert interpret(line.text) is None  # "o" then an unfinished escape: not an answer
    reader.feed(b"o\r")
    assert events(reader) == [Line("o")]


def test_idle_never_ends_a_string_or_a_paste():
    for opening in (b"\x1b]11;rgb:2828", b"\x1bP>|tmux", b"\x1b[200~"):
        reader = AnswerReader()
        reader.feed(opening)
        reader.idle()
        reader.feed(b"o\r")
        assert events(reader) == [] and reader.in_sequence, opening


def test_clear_line_keeps_the_place_in_a_straddling_reply():
    reader = AnswerReader()
    reader.feed(b"o\r" + b"a\x1b]11;rgb:28")
    reader.clear_line()  # the guard window ends here
    assert events(reader) == [] and reader.line == ""
    reader.feed(b"28/2a2a/3636\x1b\\d\r")
    assert events(reader) == [Line("d")]


def test_a_long_line_stays_no_answer_without_growing():
    (line,) = feed_bytewise(b"a" * (MAX_LINE * 4) + b"\r")
    assert len(line.text) == MAX_LINE and interpret(line.text) is None


def test_interpret():
    assert [interpret(t) for t in ("o", "s", "a", "d", "O", " d ", "")] == [
        "once",
        "session",
        "always",
        "deny",
        "once",
        "deny",
        "deny",
    ]
    assert [interpret(t) for t in ("ls", "oo", "yes", "always", "x", "\ufffd")] == [None] * 6


def test_shown_escapes_what_could_redraw_the_screen():
    assert shown("~/.ssh/evil\r\x1b[2K\x1b[1Anono:") == "~/.ssh/evil\\x0d\\x1b[2K\\x1b[1Anono:"
    assert shown("a\x9bb\x85c\x7f") == "a\\x9bb\\x85c\\x7f"
    assert shown("gpj.\u202eexe\u2066x\u2069\u200b\u2028") == "gpj.\\u202eexe\\u2066x\\u2069\\u200b\\u2028"
    assert shown(os.fsdecode(b"bad\xffname")) == "bad\\xffname"
    assert shown("back\\slash") == "back\\\\slash"
    assert (
        shown("caf\u00e9 d\u00e9j\u00e0 \u4e2d\u6587 spaces ok")
        == "caf\u00e9 d\u00e9j\u00e0 \u4e2d\u6587 spaces ok"
    )


def test_the_question_text_is_escaped_and_names_the_program():
    q = Question(
        "read",
        "~/.ssh/x\r\x1b[2K",
        "group:deny_credentials",
        program="cat",
        pid=42,
        exe="/usr/bin/cat",
        argv="cat ~/.ssh/x\r\x1b[2K",
        command="bash -c 'cat ~/.ssh/x\x1b[2K'",
    )
    text = q.text(60)
    assert "cat (pid 42) wants to read ~/.ssh/x\\x0d\\x1b[2K [group:deny_credentials]" in text
    assert "routed command: bash -c 'cat ~/.ssh/x\\x1b[2K'" in text
    assert "\x1b[2K" not in text and "x\r" not in text
    assert "[o]nce  [s]ession  [a]lways  [d]eny" in text and "a letter and Enter" in text
    assert q.needs_confirmation and not Question("read", "/x", "not granted").needs_confirmation
    assert Question("read", "/x", "--deny").needs_confirmation
    assert "whole command again" in Question("read", "/x", "not granted", rerun=True).text(60)


def test_the_guard_window_is_short():
    """Long enough for replies and type-ahead (tmux answers in under 2 ms), short enough not to notice."""
    assert 0.3 <= GUARD_SECONDS <= 0.5


# ---- the prompter on a real pty (in-process: fast, and timings measured directly) -------------------------


class Pty:
    """A pty whose output a thread collects. Closing it never leaves a thread on a bare fd number: the
    reader is joined before the master closes, and the questions still asked on it end by hangup before
    the slave closes, so the next test's pty (which gets the same numbers) is nobody else's."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.shown = b""
        self.asking: list[threading.Thread] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.master], [], [], 0.05)
            if not readable:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.shown += data

    def wait_for(self, text: bytes, timeout: float = 5.0, count: int = 1) -> float:
        deadline = time.monotonic() + timeout
        while self.shown.count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} not shown: {self.shown!r}"
            time.sleep(0.005)
        return time.monotonic()

    def ask(self, prompter: Prompter, question: Question, **kw) -> tuple[threading.Thread, list[str]]:
        """``prompter.ask`` in a thread of its own; the list receives the result."""
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(prompter.ask(question, **kw)), daemon=True)
        thread.start()
        self.asking.append(thread)
        return thread, result

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def answer(self, data: bytes) -> None:
        """Typed as a human answers: once the guard window of what was just drawn has passed."""
        time.sleep(GUARD_SECONDS + 0.1)
        self.type(data)

    def asked(self, question: Question) -> tuple[threading.Thread, list[str]]:
        """``question`` on screen, asked by a prompter of its own (``ask``)."""
        thread, result = self.ask(Prompter(self.slave, timeout=10), question)
        self.wait_for(b"? ")
        return thread, result

    def close(self) -> None:
        self._stop.set()
        self._reader.join()
        os.close(self.master)  # a hangup: every question still on this pty reads EOF and ends
        for thread in self.asking:
            thread.join(10)
        os.close(self.slave)
        assert not any(t.is_alive() for t in self.asking), "a question outlived its pty"


def _joined(thread: threading.Thread, result: list[str]) -> list[str]:
    """What the question asked in ``thread`` returned, once it has (5 s at the most)."""
    thread.join(5)
    return result


@pytest.fixture
def pty():
    p = Pty()
    yield p
    p.close()


QUESTION = Question("read", "~/.aws/credentials", "group:deny_credentials", program="cat", pid=7)
PLAIN = Question("read", "/opt/data", "not granted", program="cat", pid=7)


def test_input_within_the_guard_window_is_discarded_and_an_answer_after_it_counts(pty):
    prompter = Prompter(pty.slave, timeout=10)
    thread, result = pty.ask(prompter, PLAIN)
    drawn = pty.wait_for(b"? ")
    pty.type(b"o\r" + REPLIES["OSC 11 background colour (ST)"] + b"a\r")
    time.sleep(GUARD_SECONDS + 0.1)
    assert thread.is_alive()  # nothing typed within the window answered
    sent = time.monotonic()
    pty.type(b"d\r")
    assert _joined(thread, result) == ["deny"]
    assert time.monotonic() - sent < 0.5  # an answer after the window is taken at once
    assert sent - drawn < GUARD_SECONDS + 0.5


def test_replies_after_the_guard_window_never_answer(pty):
    thread, result = pty.asked(PLAIN)
    time.sleep(GUARD_SECONDS + 0.1)
    for reply in REPLIES.values():
        pty.type(reply)
        time.sleep(0.01)
    time.sleep(0.2)
    assert thread.is_alive() and result == []
    pty.type(b"s\r")
    assert _joined(thread, result) == ["session"]


def test_ordinary_typing_asks_again(pty):
    thread, result = pty.asked(PLAIN)
    pty.answer(b"ls\r")
    pty.wait_for(b"not an answer")
    assert thread.is_alive()
    pty.answer(b"o\r")
    assert _joined(thread, result) == ["once"]


def test_always_on_a_deny_group_path_needs_the_word(pty):
    thread, result = pty.asked(QUESTION)
    pty.answer(b"a\r")
    pty.wait_for(b"type the word always")
    pty.answer(b"a\r")  # a letter is not the word
    pty.wait_for(b"not confirmed")
    assert thread.is_alive()
    pty.answer(b"a\r")
    pty.wait_for(b"type the word always", count=2)
    pty.answer(b"always\r")
    assert _joined(thread, result) == ["always"]


def test_always_elsewhere_is_one_answer(pty):
    thread, result = pty.asked(PLAIN)
    pty.answer(b"a\r")
    assert _joined(thread, result) == ["always"]


def test_enter_alone_and_ctrl_c_deny(pty):
    prompter = Prompter(pty.slave, timeout=10)
    for key in (b"\r", b"\x03"):
        thread, result = pty.ask(prompter, PLAIN)
        time.sleep(GUARD_SECONDS + 0.2)
        pty.type(key)
        assert _joined(thread, result) == ["deny"], key


def test_no_answer_times_out_from_when_the_question_is_drawn(pty):
    prompter = Prompter(pty.slave, timeout=1.0)
    start = time.monotonic()
    thread, result = pty.ask(prompter, PLAIN)
    assert _joined(thread, result) == [prompt.TIMED_OUT] and 1.0 <= time.monotonic() - start < 2.0
    pty.wait_for(b"no answer: timed out")


def test_one_question_at_a_time_and_the_next_comes_up_when_it_is_answered(pty):
    prompter = Prompter(pty.slave, timeout=10)
    first, first_result = pty.ask(prompter, PLAIN)
    pty.wait_for(b"? ")
    second, second_result = pty.ask(prompter, QUESTION)
    time.sleep(GUARD_SECONDS + 0.1)
    assert second.is_alive() and pty.shown.count(b"wants to") == 1  # one question on screen at a time
    pty.type(b"d\r")
    first.join(5)
    shown_at = pty.wait_for(b"wants to", count=2)
    assert first_result == ["deny"] and time.monotonic() - shown_at < 0.5
    pty.answer(b"o\r")
    assert _joined(second, second_result) == ["once"]


def test_an_unanswered_question_gives_way_to_a_waiting_one(pty):
    """The timeout runs from when a question is drawn; while another waits, the one on screen has its
    share (half the timeout) and then times out, so the waiting one comes up within its own timeout."""
    prompter = Prompter(pty.slave, timeout=4)
    first, first_result = pty.ask(prompter, PLAIN)
    pty.wait_for(b"? ")
    asked = time.monotonic()
    second, second_result = pty.ask(prompter, QUESTION)
    shown_at = pty.wait_for(b"wants to", count=2)
    assert first_result == [prompt.TIMED_OUT] and b"another question is waiting" in pty.shown
    assert 2.0 - 0.1 <= shown_at - asked < 2.0 + 0.8  # its share: half of the timeout
    pty.answer(b"o\r")
    assert _joined(second, second_result) == ["once"]
    # Alone on screen, a question has its whole timeout.
    start = time.monotonic()
    third, third_result = pty.ask(prompter, PLAIN)
    third.join(10)
    assert third_result == [prompt.TIMED_OUT] and 4.0 <= time.monotonic() - start < 5.0


def test_a_question_that_cannot_reach_the_screen_is_denied_as_timed_out(pty):
    prompter = Prompter(pty.slave, timeout=2.0, wait=0.5, share=10)
    held, _ = pty.ask(prompter, PLAIN)
    pty.wait_for(b"? ")
    start = time.monotonic()
    waiting, waiting_result = pty.ask(prompter, PLAIN)
    assert _joined(waiting, waiting_result) == [prompt.TIMED_OUT] and 0.5 <= time.monotonic() - start < 1.2
    held.join(5)


def test_a_withdrawn_question_leaves_the_queue(pty):
    prompter = Prompter(pty.slave, timeout=5)
    first, _ = pty.ask(prompter, PLAIN)
    pty.wait_for(b"? ")
    gone = threading.Event()
    second, second_result = pty.ask(prompter, PLAIN, alive=lambda: not gone.is_set())
    gone.set()
    second.join(3)
    assert second_result == [prompt.WITHDRAWN]
    time.sleep(GUARD_SECONDS)
    pty.type(b"o\r")
    first.join(5)

r"""Reading an answer from a terminal, sans-IO: bytes in, a typed line (or a cancel) or "need more" out.

Terminals answer queries with escape sequences that hold letters (``ESC ] 11;rgb:2828/2a2a/3636 ESC \``,
``ESC P >|tmux 3.3a ESC \``), so the reader parses and drops whole sequences, never the bytes it does not
know one at a time: CSI (``ESC [`` ... final byte), OSC (``ESC ]`` ... BEL or ST), DCS, SOS, PM and APC
(``ESC P``/``X``/``^``/``_`` ... ST), SS2/SS3 (``ESC N``/``ESC O`` and one byte), other two- and
three-byte escapes (``ESC (B``, Alt+key), and a bracketed paste (``ESC [200~`` ... ``ESC [201~``) whole.
Only bytes outside every sequence are typed text; a line ends with Enter (CR, LF or CR LF).

No sequence a terminal sends contains an Enter outside it, so no reply can complete a line on its own.
The terminal is taken as UTF-8: 8-bit C1 bytes (0x9B, 0x9C...) are not introducers or terminators (a
title holding ``Ĝ``, C4 9C, must not end a title report early); outside a sequence they are just non-ASCII
text, which no answer contains. The string sequences (OSC, DCS...) end only at their terminator, never by
time: a truncated reply swallows what follows (fail closed; Ctrl-C still cancels). The short ones (a lone
Escape key press) are dropped by ``idle()``, which the caller invokes after a quiet gap; the line they
interrupted can no longer be an answer.

The caller owns time and I/O: ``feed(data)``, then ``next_event()`` until it returns ``NEED_DATA``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AnswerReader", "Line", "CANCEL", "NEED_DATA", "interpret", "ANSWERS", "MAX_LINE"]

ANSWERS = {"o": "once", "s": "session", "a": "always", "d": "deny"}
MAX_LINE = 64  # longer lines are kept as "not an answer" without growing

_ESC, _BEL, _CR, _LF, _CAN, _SUB = 0x1B, 0x07, 0x0D, 0x0A, 0x18, 0x1A
_CANCELS = (0x03, 0x04)  # Ctrl-C, Ctrl-D: deny at once, recognised in every state (denying is always safe)
_ERASE = (0x7F, 0x08)  # DEL and BS: the last typed character goes
_KILL = 0x15  # Ctrl-U: the whole line goes
_NOT_TEXT = "\ufffd"  # what an aborted sequence or a control character leaves in the line
_PASTE_END = b"\x1b[201~"

# Parser states
_GROUND, _ESCAPE, _INTERMEDIATE, _SINGLE, _CSI, _STRING, _STRING_ESC, _PASTE = range(8)


@dataclass(frozen=True)
class Line:
    """A line the human (or something) typed and ended with Enter; ``text`` never holds a sequence."""

    text: str


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CANCEL = _Marker("CANCEL")  # Ctrl-C or Ctrl-D: deny now
NEED_DATA = _Marker("NEED_DATA")


class AnswerReader:
    """One question's input. ``line`` is what has been typed on the current line so far (for echo)."""

    def __init__(self) -> None:
        self._state = _GROUND
        self._osc = False  # the string being skipped may end with BEL (OSC only)
        self._csi = bytearray()  # parameters of the CSI being skipped, to see ESC [200~
        self._paste = 0  # how much of ESC [201~ has been matched inside a paste
        self._after_cr = False  # an LF right after a CR is the same Enter
        self._line: list[str] = []
        self._events: list[object] = []

    # -- the caller's side ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        for byte in data:
            self._byte(byte)

    def next_event(self) -> object:
        """``Line``, ``CANCEL``, or ``NEED_DATA`` when nothing more can be said from what was fed."""
        return self._events.pop(0) if self._events else NEED_DATA

    @property
    def line(self) -> str:
        return "".join(self._line)

    @property
    def in_sequence(self) -> bool:
        """Inside an escape sequence (or a paste): bytes are being skipped."""
        return self._state != _GROUND

    def idle(self) -> None:
        """Input went quiet: a short sequence that never finished (a lone Escape key) is dropped, and the
        line it interrupted cannot be an answer. String sequences and pastes wait for their terminator."""
        if self._state in (_ESCAPE, _INTERMEDIATE, _SINGLE, _CSI):
            self._state = _GROUND
            self._taint()

    def clear_line(self) -> None:
        """Forget what was typed so far (the guard window ended), keeping the parser's place in a
        sequence: a reply that straddles the end of the window is still skipped whole."""
        self._line.clear()
        self._events.clear()
        self._after_cr = False

    # -- the state machine ---------------------------------------------------------------------------------

    def _byte(self, b: int) -> None:
        if b in _CANCELS:
            self._events.append(CANCEL)
            return
        state = self._state
        if state == _GROUND:
            self._ground(b)
        elif state == _ESCAPE:
            self._escape(b)
        elif state == _INTERMEDIATE:
            self._in_escape(b, lambda: 0x30 <= b <= 0x7E, lambda: 0x20 <= b <= 0x2F)
        elif state == _SINGLE:
            self._in_escape(b, lambda: 0x20 <= b <= 0x7E, lambda: False)
        elif state == _CSI:
            self._in_csi(b)
        elif state == _STRING:
            if b == _ESC:
                self._state = _STRING_ESC
            elif b == _BEL and self._osc:
                self._state = _GROUND
        elif state == _STRING_ESC:
            if b == 0x5C:  # ESC \ = ST
                self._state = _GROUND
            elif b != _ESC:
                self._state = _STRING  # an ESC inside the string: keep skipping (fail closed)
        else:  # _PASTE
            self._in_paste(b)

    def _ground(self, b: int) -> None:
        after_cr, self._after_cr = self._after_cr, False
        if b == _CR or b == _LF:
            if b == _LF and after_cr:
                return  # CR LF: one Enter
            self._after_cr = b == _CR
            self._events.append(Line(self.line))
            self._line.clear()
        elif b == _ESC:
            self._state = _ESCAPE
        elif b in _ERASE:
            if self._line:
                self._line.pop()
        elif b == _KILL:
            self._line.clear()
        elif 0x20 <= b <= 0x7E:
            self._append(chr(b))
        else:  # other C0 controls, and non-ASCII bytes: never part of an answer
            self._taint()

    def _escape(self, b: int) -> None:
        if b == 0x5B:  # [
            self._state = _CSI
            self._csi.clear()
        elif b in (0x5D, 0x50, 0x58, 0x5E, 0x5F):  # ] P X ^ _
            self._state = _STRING
            self._osc = b == 0x5D
        elif b in (0x4E, 0x4F):  # N O: SS2, SS3 take one more byte
            self._state = _SINGLE
        else:
            self._in_escape(b, lambda: 0x30 <= b <= 0x7E, lambda: 0x20 <= b <= 0x2F)

    def _in_escape(self, b: int, final, intermediate) -> None:
        if b == _ESC:
            self._state = _ESCAPE
        elif b in (_CAN, _SUB):
            self._state = _GROUND
        elif final():
            self._state = _GROUND
        elif intermediate():
            self._state = _INTERMEDIATE
        elif b >= 0x80:
            self._state = _GROUND
            self._taint()
        # other C0 controls inside a sequence are swallowed (a CR there is never an Enter)

    def _in_csi(self, b: int) -> None:
        if 0x40 <= b <= 0x7E:
            self._state = _PASTE if (self._csi == b"200" and b == 0x7E) else _GROUND
            self._paste = 0
        elif 0x20 <= b <= 0x3F:
            if len(self._csi) < 16:
                self._csi.append(b)
        elif b == _ESC:
            self._state = _ESCAPE
        elif b in (_CAN, _SUB):
            self._state = _GROUND
        elif b >= 0x80:
            self._state = _GROUND
            self._taint()

    def _in_paste(self, b: int) -> None:
        if b == _PASTE_END[self._paste]:
            self._paste += 1
            if self._paste == len(_PASTE_END):
                self._state = _GROUND
        else:
            self._paste = 1 if b == _ESC else 0

    def _append(self, ch: str) -> None:
        if len(self._line) < MAX_LINE:
            self._line.append(ch)
        elif self._line[-1] != _NOT_TEXT:
            self._line[-1] = _NOT_TEXT

    def _taint(self) -> None:
        if not self._line or self._line[-1] != _NOT_TEXT:
            self._append(_NOT_TEXT)


def interpret(text: str) -> str | None:
    """The answer a typed line gives: one letter of ``ANSWERS`` (either case; spaces around it are fine),
    ``deny`` for an empty line (Enter alone is the default), None for anything else (ask again)."""
    word = text.strip(" ").lower()
    if not word:
        return "deny"
    return ANSWERS.get(word) if len(word) == 1 else None

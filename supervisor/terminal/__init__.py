"""The terminal wing: the human's part of a decision.

``prompt`` asks a question on the terminal the supervisor owns, ``answer`` reads the reply from raw
keystrokes, ``consent`` turns a held syscall into one question (asked once, however many calls wait on it),
and ``proxy`` copies a command's or the agent's pty to that terminal and pauses while a question is on it.
"""

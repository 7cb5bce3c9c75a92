"""The seccomp notify loop: one per command, answering every trapped syscall of its process tree.

The hot path is C (``_notify.c``: receive, read the path once, the lexical fast path, CONTINUE) and runs
without the GIL; what it does not CONTINUE comes here, to ``_escalate``, with the bytes it read. Loops run
on kept threads (``_THREADS``). The filter leaves a command's opens and execve to Landlock (``seccomp``).

Every handled syscall goes one way (DESIGN.md invariant 7):
1. **read once**: each path (and every other argument in memory) is read from the target exactly once;
2. **fast path**: if the Landlock baseline alone grants what the syscall needs on the path as read, the
   answer is CONTINUE and the kernel enforces it (invariant 1; only for calls Landlock covers);
3. **resolve once, pin**: otherwise the bytes read are resolved from the target's view into a ``Pin``
   (``resolve``), with the kernel's own errno for what would fail before any permission check;
4. **decide on the pin**: ``Checker.decide`` gives a ``Permit`` for the pin's real path, or a ``Refusal``;
5. **act through the pin** (``emulate``), only after NOTIF_ID_VALID (invariant 3), with the thread's
   capabilities dropped so the kernel checks what the command itself could do.
Handlers return decision values (``decisions``); only ``_respond`` issues ioctls.

One thread serves the listener at a time. A decision that waits for the human is held by the thread that
took it: that thread hands the listener to another first (``_hold``), so a question on screen stalls only
its own syscall, never the command's other threads or processes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING

from nono_shell.personality import START_UP
from nono_supervisor.linux import emulate, sockets, terminals, undo_calls
from nono_supervisor.linux.decisions import (
    CONTINUE,
    Continue,
    Decision,
    Denial,
    Deny,
    Emulate,
    Inject,
    Outcome,
    Value,
)
from nono_supervisor.linux.emulate import SETID_BITS, Checker, Permit, Refusal
from nono_supervisor.linux.kernel import pidfd_getfd
from nono_supervisor.linux.landlock import ACCESS_FS, RightsIndex
from nono_supervisor.linux.loopapi import Entry
from nono_supervisor.linux.resolve import OPEN_HOW, FdRef, Pin, Reader, resolve_bytes
from nono_supervisor.linux.seccomp import TIOCGPTPEER, TRAPS, Trap, arg, load_pyseccomp, position
from nono_supervisor.policy import access
from nono_supervisor.policy.access import ON_THE_WAY, AccessIndex
from nono_supervisor.procfs import process_of, umask_of
from nono_supervisor.shm import SessionShm

if TYPE_CHECKING:
    from nono_supervisor.netproxy import NetClient
    from nono_supervisor.undo import CommandLog

__all__ = ["NotifyLoop", "Denial", "Decision"]

# KERNEL-NOTES.md: ioctl numbers and struct layouts, checked on the CI kernel.
_IOCTL_RECV = 0xC0502100
_IOCTL_SEND = 0xC0182101
_IOCTL_ID_VALID = 0x40082102
_IOCTL_ADDFD = 0x40182103
_IOCTL_SET_FLAGS = 0x40082104
_FLAG_CONTINUE = 1
_ADDFD_FLAG_SEND = 2
_FD_SYNC_WAKE_UP = 1
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]: 80 bytes
_RESP = struct.Struct("=QqiI")  # id, val, error, flags: 24 bytes
_ADDFD = struct.Struct("=QIIII")  # id, flags, srcfd, newfd, newfd_flags: 24 bytes
_ID = struct.Struct("=Q")
_TIMESPEC2 = struct.Struct("=qqqq")
_AT_FDCWD = 0xFFFFFF9C  # -100 as the low 32 bits of a syscall argument
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_REMOVEDIR = 0x200
_AT_SYMLINK_FOLLOW = 0x400
_AT_EMPTY_PATH = 0x1000
_O_TMPFILE = 0o20000000
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_IN_DONT_FOLLOW = 0x02000000
_FAN_MARK_DONT_FOLLOW = 0x04
_XATTR_SIZE_MAX = 65536
_XATTR_NAME_MAX = 255
_MAX_WORKERS = 8  # blocking emulations (connects) in flight per command; more wait for a free worker
# Syscalls of one command held at a question while another thread serves the rest (``_hold``); past this,
# a question is asked on the serving thread and the command's other syscalls wait for it, as a bound on the
# threads a command tree of many asking processes can make the supervisor hold.
_MAX_HELD = 16

_A = ACCESS_FS
_O_ACCMODE, _O_WRONLY, _O_RDWR = os.O_ACCMODE, os.O_WRONLY, os.O_RDWR
_MAGIC_PREFIXES = ("/proc", "/dev/fd", "/dev/std")  # resolved in the target's view: never the fast path
_NEVER_SETID = "setuid/setgid bits: never grantable"


class _Threads:
    """The threads notify loops run on, kept between commands: starting a command's loop hands it to an
    idle thread instead of making one (a new thread's creation and first run, which the starter waits for,
    cost a command 0.2 ms idle and up to 1.5 ms under load here). A thread that finishes a loop waits for
    the next while fewer than ``idle_max`` are waiting, else ends. Each keeps its effective capabilities
    dropped (every loop drops them first) and holds nothing of a loop it has finished."""

    def __init__(self, idle_max: int = 16) -> None:
        self._idle: list[_Slot] = []
        self._lock = threading.Lock()
        self._idle_max = idle_max

    def run(self, work: Callable[[], None]) -> None:
        """Run ``work``: a loop's ``run``, or its ``_serve`` taking over from one that holds a question."""
        with self._lock:
            slot = self._idle.pop() if self._idle else None
        if slot is not None:
            slot.give(work)
            return
        slot = _Slot(self)
        slot.give(work)
        threading.Thread(target=slot.serve, name="nono-notify", daemon=True).start()

    def park(self, slot: _Slot) -> bool:
        with self._lock:
            if len(self._idle) >= self._idle_max:
                return False
            self._idle.append(slot)
            return True


class _Slot:
    """One thread of ``_Threads``: the loop work it runs next."""

    def __init__(self, threads: _Threads) -> None:
        self._threads = threads
        self._next: list[Callable[[], None]] = []
        self._ready = threading.Condition(threading.Lock())

    def give(self, work: Callable[[], None]) -> None:
        with self._ready:
            self._next.append(work)
            self._ready.notify()

    def serve(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._next)
                work = self._next.pop()
            try:
                work()
            except BaseException:  # noqa: BLE001 - a loop's end (SystemExit included) is not the thread's
                _debug_trace()
            del work
            if not self._threads.park(self):
                return


_THREADS = _Threads()


class _Drainer:
    """One thread for the session: the files each running command created or kept on the C fast path, and
    the files Python saw it make (``CommandLog._made``), are recorded for undo (``NotifyLoop.record_created``)
    off the commands' own time, once a second (four times while it finds any); started with the first
    recording loop."""

    def __init__(self) -> None:
        self._loops: weakref.WeakSet[NotifyLoop] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, loop: NotifyLoop) -> None:
        with self._lock:
            self._loops.add(loop)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nono-undo-drain", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        busy = False
        while True:
            # Busy (the last pass found records): 4 passes a second, so that what waits for the command's
            # end, when its loop drains the rest before its exit is told (npm install: ~10 ms), is small.
            time.sleep(0.25 if busy else 1.0)
            with self._lock:
                loops = list(self._loops)
            busy = False
            for loop in loops:
                if loop.is_alive():
                    try:
                        busy = loop.record_created() or busy
                        if loop.undo is not None:  # a recording loop's (only those are registered)
                            loop.undo.flush()  # what Python saw it make, held back (CommandLog._made)
                    except Exception:  # noqa: BLE001 - a lost record, never a stopped drainer
                        _debug_trace()
                else:
                    with self._lock:
                        self._loops.discard(loop)


_DRAINER = _Drainer()


class _Call(threading.local):
    """What one thread knows of the notification it is deciding. Per thread: a thread that holds a question
    goes on deciding its own call (its handler's frame, its pins, its tid) while another serves the loop."""

    serving = False  # this thread receives the loop's notifications (at most one thread at a time does)
    # (address, bytes) of what this notification read: the C fast path's reads, then ``read``'s; None
    # outside ``_dispatch`` (a handler called alone, as tests do, reads afresh each time)
    preread: tuple[tuple[int, bytes], ...] | None = None
    nid = 0
    tid = 0
    reader: Reader | None = None


class NotifyLoop:
    """Answers one command tree's notifications until the last process holding the filter exits; runs on
    a thread of ``_THREADS`` (``start``, ``join`` and ``is_alive`` as a thread's)."""

    # The agent's hook, set on a loop class as a staticmethod (``launcher``: routing without a namespace
    # records each shell it runs): called with (tid, path as read) for every execve and execveat before
    # the call is decided on the same bytes, LinuxHooks taking a loop class, not a loop. A
    # loop class with the hook sees every notification: its filter traps every open and exec (no
    # ask-again library: its own reads are asked about and reported at once, static binaries included),
    # and the Python pipeline answers them all (the C fast path would CONTINUE an exec unseen).
    on_exec: Callable[[int, bytes], None] | None = None
    net_proxy: NetClient | None = None  # domains mode: set by linux.backend (``sockets``)

    def __init__(
        self,
        listener: int,
        rights: RightsIndex,
        access: AccessIndex,
        on_decision: Callable[[str, Denial], None],
        consent: Callable[..., bool] | None = None,
        allowed_sockets: frozenset[str] = frozenset(),
        *,
        net_block: bool = False,
        own_terminals: frozenset[str] = frozenset(),
        linked_denied: Callable[[], frozenset[tuple[int, int]]] = frozenset,
        linked: bool | None = None,
        undo: CommandLog | None = None,
        shm: SessionShm | None = None,
    ) -> None:
        self.name = f"nono-notify-{listener}"
        self.undo = undo  # the command's undo.CommandLog: paths recorded before a call may change them
        self._started = False
        self._finished = threading.Event()
        self._dropped: threading.Event | None = None  # set once the loop's thread acts with no capability
        self.failure: str | None = None  # why this loop answers nothing: its command must not run
        self.listener = listener
        self.rights = rights
        self.access = access
        self.on_decision = on_decision
        self.consent = consent  # the human, asked while the syscall waits (or None)
        self.allowed_sockets = allowed_sockets  # the supervisor's own socket: nested routing
        self.net_block = net_block
        self.own_terminals = own_terminals  # the supervisor's terminal: never reopened for a command
        self.checker = Checker(access, self._ask, linked_denied, shm)
        # With a multi-linked denied file somewhere, no regular-file open may be CONTINUEd: Landlock
        # follows the name, and another name of the file may lie inside a grant.
        self._linked = bool(linked_denied()) if linked is None else linked  # the filter was chosen by it
        self._call = _Call()
        self._native = _native_loop(type(self), listener, rights, self._linked, undo is not None)
        self.guarded = False  # a denied node moved into what the frozen baseline grants (``guard``)
        if undo is not None and self._native is not None:
            store = undo.store
            trees = tuple(os.fsencode(p) for p in undo.roots), tuple(os.fsencode(p) for p in undo.skip)
            self._native.keep(store.blobs, *trees, store.budget())
        self.native_stats: dict[str, int] = {}
        self._recv = bytearray(_NOTIF.size)
        self._zero = bytes(_NOTIF.size)
        self._handlers = _dispatch_table()
        self._workers = threading.BoundedSemaphore(_MAX_WORKERS)
        self._pending = 0  # workers and held questions still to answer: the listener stays open for them
        self._held = 0  # of which held questions (``_hold``)
        self._pending_lock = threading.Condition()
        self._drain_lock = threading.Lock()
        self._set_sync_wakeup()

    def guard(self) -> None:
        """From now on nothing is CONTINUEd on the strength of the Landlock baseline: a denied node has
        moved into what it grants, and the kernel cannot be asked again (a domain never changes). Every
        open, exec and entry change is resolved, pinned and decided on where the denied nodes are now
        (``latedeny``; the agent, whose own calls are all trapped). Never lifted: the session's rest."""
        self.guarded = True
        self.checker.guarded = True
        if self._native is not None:
            self._native.guard()

    def start(self) -> None:
        """Begin answering (on a kept thread). The caller waits for it only where the supervisor holds
        capabilities (root): until the thread has dropped them, or set ``failure`` if it could not, so that
        the command is refused before its exec rather than served with the supervisor's powers."""
        if self._started:
            raise RuntimeError("a notify loop is started once")
        self._started = True
        if emulate.has_effective_capabilities():
            self._dropped = threading.Event()
        if self.undo is not None:
            _DRAINER.add(self)
        _THREADS.run(self.run)
        if self._dropped is not None:
            self._dropped.wait()

    def join(self, timeout: float | None = None) -> None:
        self._finished.wait(timeout)

    def is_alive(self) -> bool:
        return self._started and not self._finished.is_set()

    @property
    def reader(self) -> Reader:
        """This thread's reader of the target's memory (made on first use: most commands never need one)."""
        if self._call.reader is None:
            self._call.reader = Reader()
        return self._call.reader

    # The notification the calling thread decides (``_Call``).
    @property
    def _current(self) -> int:
        return self._call.nid

    @property
    def _tid(self) -> int:
        return self._call.tid

    def _set_sync_wakeup(self) -> None:
        """Wake the answering thread on the waiting CPU (6.6+): 82 -> 11 us per trapped open here."""
        if os.environ.get("NONO_SYNC_WAKEUP") == "0":  # for bench/bench_notify.py's comparison only
            return
        try:
            fcntl.ioctl(self.listener, _IOCTL_SET_FLAGS, _FD_SYNC_WAKE_UP)  # by value, not a pointer
        except OSError:
            pass  # before 6.6: still correct, only slower

    def run(self) -> None:
        """The loop's first thread: drops its capabilities, then serves."""
        # What the supervisor does for a command, it does with the command's powers (a root supervisor's
        # CAP_DAC_OVERRIDE/CAP_FOWNER/CAP_CHOWN would otherwise reach what the command cannot).
        dropped = False
        try:
            emulate.drop_capabilities()
            dropped = True
        except OSError as e:
            self.failure = f"capset: {e.strerror} (the notify thread would keep the supervisor's powers)"
        finally:
            if self._dropped is not None:
                self._dropped.set()
            if not dropped:
                self._close()  # every trapped syscall fails (ENOSYS), none is served
        if dropped:
            self._serve()

    def _serve(self) -> None:
        """Answer notifications until every process under the filter has exited (this thread then closes
        the listener, once what is pending is answered), or until this thread holds a question (``_hold``:
        another thread serves meanwhile; this one answers its own call, then is done with the loop)."""
        self._call.serving = True
        try:
            if self._native is None:
                emulate.drop_capabilities()  # as the C loop does: a thread taking over checks its own
                self._run_python()
            else:
                try:
                    # drops this thread's effective capabilities (C, the same check as ``run``): also the
                    # first thing a thread taking over does; the GIL is taken only for what it escalates
                    self._native.serve(self._escalate)
                finally:
                    self.native_stats = self._native.stats()
                    self.record_created()
        finally:
            if self._call.serving:
                self._call.serving = False
                self._close()
            else:
                with self._pending_lock:
                    self._held -= 1
                    self._pending -= 1
                    self._pending_lock.notify_all()

    def _close(self) -> None:
        try:
            with self._pending_lock:
                self._pending_lock.wait_for(lambda: self._pending == 0)
            os.close(self.listener)
            if self.undo is not None:
                self.undo.finish()  # the last process under the filter is gone: the command has ended
        finally:
            self._finished.set()

    def _hold(self) -> None:
        """Called by the consent just before it waits for the human (its question, or the same question
        asked already for another call): this thread stops serving and another takes over the listener, so the
        command's other syscalls are answered while this one is held (issue 22: a question no longer stalls
        ``make -j`` siblings or a program's other threads). This thread keeps the call it decides: its
        handler's pins (invariant 7: what was checked is what is acted on, nothing is resolved again), its
        tid, and the final answer, which ``_dispatch`` sends through ``_respond`` after NOTIF_ID_VALID.
        Not from a worker or a thread that already holds one; past ``_MAX_HELD``, or with no thread to
        take over, the question is asked while serving (the command waits, as it did before)."""
        call = self._call
        if not call.serving:
            return
        with self._pending_lock:
            if self._held >= _MAX_HELD:
                return
            self._held += 1
            self._pending += 1  # the listener stays open until this call is answered
        call.serving = False
        try:
            _THREADS.run(self._serve)  # a kept thread: its capabilities dropped, as this one's
        except Exception:  # noqa: BLE001 - no thread to take over (EAGAIN): ask while serving, as before
            _debug_trace()
            call.serving = True
            with self._pending_lock:
                self._held -= 1
                self._pending -= 1

    def _escalate(self, nid: int, tid: int, nr: int, args: tuple[int, ...], reads) -> bool:
        """What the C fast path did not CONTINUE: the Python pipeline, on the bytes it already read. True
        when this thread held a question meanwhile and another now serves: the C loop then returns."""
        try:
            self._dispatch(nid, tid, nr, list(args), reads)
        except Exception:  # noqa: BLE001 - one bad answer must not end the loop (ENOSYS for all)
            _debug_trace()
            self._respond_quietly(nid, errno.EACCES)
        return not self._call.serving

    def _run_python(self) -> None:
        """The loop without the C fast path (NONO_NOTIFY_NATIVE=0, or a loop class with ``on_exec``,
        which wants every notification)."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        while True:
            events = poller.poll()
            if any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in events):
                return  # every process under the filter has exited
            try:
                self._recv[:] = self._zero  # RECV wants a zeroed buffer (EINVAL otherwise)
                fcntl.ioctl(self.listener, _IOCTL_RECV, self._recv, True)
            except OSError as e:
                # ENOENT: the target died or was signalled between poll and recv. Not fatal: a loop
                # that gives up here would park every later syscall of the tree forever.
                if e.errno in (errno.ENOENT, errno.EINTR):
                    continue
                raise
            nid, tid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack_from(self._recv)
            try:
                self._dispatch(nid, tid, nr, args)
            except Exception:  # noqa: BLE001 - one bad answer must not end the loop (ENOSYS for all)
                _debug_trace()
                self._respond_quietly(nid, errno.EACCES)
            if not self._call.serving:
                return  # this thread held a question (``_hold``): another serves the loop now

    def _dispatch(
        self, nid: int, tid: int, nr: int, args: list[int], reads: tuple[tuple[int, bytes], ...] = ()
    ) -> None:
        """Decide one notification and answer it; ``reads``: what the C fast path read of its memory."""
        self._call.preread = reads  # this notification's own: never another's bytes at the same address
        try:
            self._decide_and_answer(nid, tid, nr, args)
        finally:
            self._call.preread = None

    def _decide_and_answer(self, nid: int, tid: int, nr: int, args: list[int]) -> None:
        entry = self._handlers.get(nr)
        if entry is None:  # the filter and this table come from one list; this is a bug, fail closed
            self._respond(nid, Deny(errno.ENOSYS))
            return
        trap, handler = entry  # an unbound function: no per-loop table, no self -> dict -> self cycle
        self._call.nid, self._call.tid = nid, tid  # for a question held on this syscall, and for its report
        if self.on_exec is not None and trap.kind == "exec":
            raw = self.read(tid, arg(args, trap.path))  # read once: the handler decides on these bytes
            if isinstance(raw, bytes):
                self.on_exec(tid, raw)  # a failure fails this exec closed (EACCES, by the caller)
        if self.undo is not None and trap.kind in undo_calls.RECORDED:
            self._record(trap, tid, args)
        try:
            decision = handler(self, trap, tid, args)
        except OSError as e:
            decision = Deny(e.errno or errno.EACCES)
        except Exception:  # noqa: BLE001 - a handler bug denies this one syscall; it never lets it through
            _debug_trace()
            decision = Deny(errno.EACCES)
        if isinstance(decision, Emulate):
            if not self._still_valid(nid):
                decision.release()
                return  # the target moved on (signal, death): act on nothing
            if decision.blocking:
                self._run_on_worker(nid, decision)
                return
            decision = _carry_out(decision)
        self._respond(nid, decision)

    def record_created(self) -> bool:
        """What the C fast path created and kept (undo), recorded: by ``_DRAINER`` (``changes`` of a running
        command lags by a second at most), before a record of a path still queued (``drain_for``), and
        when the command ends. Whether there was any."""
        if self.undo is None or self._native is None:
            return False
        with self._drain_lock:
            items = self._native.created()
            if items:
                self.undo.drained(items)
                self._native.keep(-1, (), (), self.undo.store.budget())  # a new budget for hard links
        return bool(items)

    def drain_for(self, *paths: str) -> None:
        """Before ``paths`` are recorded: what the fast path queued of them, inside them or above them is
        recorded first, so that a path's first state is its state before the command and undo replays
        related records in the right order (``Loop.queued``; test_undo: a file made then rewritten, a
        directory renamed after files were made in it). Only then: draining before every escalation put npm
        install's thousand records on its own time."""
        if self._native is not None and any(self._native.queued(os.fsencode(p)) for p in paths if p):
            self.record_created()

    def _record(self, trap: Trap, tid: int, args: list[int]) -> None:
        """What the call may change, kept for undo before it is answered; a failure here loses that record
        only, never the answer."""
        try:
            undo_calls.record_call(self, trap, tid, args)
        except Exception:  # noqa: BLE001 - undo is a convenience: the syscall is decided as without it
            _debug_trace()

    def _run_on_worker(self, nid: int, emulation: Emulate) -> None:
        """A call that may block (connect, send on a full buffer) runs on a worker, so the command's other
        threads are answered meanwhile. Workers start from this thread: they inherit its dropped powers."""
        self._workers.acquire()
        with self._pending_lock:
            self._pending += 1

        def work() -> None:
            try:
                self._respond(nid, _carry_out(emulation))
            finally:
                self._workers.release()
                with self._pending_lock:
                    self._pending -= 1
                    self._pending_lock.notify_all()

        threading.Thread(target=work, name=f"nono-emulate-{nid}", daemon=True).start()

    def _still_valid(self, nid: int) -> bool:
        try:
            fcntl.ioctl(self.listener, _IOCTL_ID_VALID, _ID.pack(nid))
            return True
        except OSError:
            return False

    def _respond(self, nid: int, decision: Outcome) -> None:
        """The only place that answers the kernel (from the serving thread, a worker, or a thread that held
        a question: each with a response of its own)."""
        try:
            if isinstance(decision, Continue):
                fcntl.ioctl(self.listener, _IOCTL_SEND, _RESP.pack(nid, 0, 0, _FLAG_CONTINUE))
                return
            if isinstance(decision, Inject):
                try:
                    cloexec = os.O_CLOEXEC if decision.cloexec else 0
                    request = _ADDFD.pack(nid, _ADDFD_FLAG_SEND, decision.fd, 0, cloexec)
                    fcntl.ioctl(self.listener, _IOCTL_ADDFD, request)
                finally:
                    os.close(decision.fd)
                self._report(decision.recorded, decision.grant)
                return
            if isinstance(decision, Value):
                response, verdict, what = _RESP.pack(nid, decision.value, 0, 0), "grant", decision.grant
            else:
                # A denial is reported before it is answered: the agent's line (``report.tell_process``)
                # then reaches its stderr while the call still waits, before the program's own error and
                # its shell's next prompt (test_prompt's in-flight deny read it after the prompt, now and
                # then). Denials are few; a grant is answered first (reporting may be slow).
                self._report("deny", decision.denial)
                fcntl.ioctl(self.listener, _IOCTL_SEND, _RESP.pack(nid, 0, -decision.error, 0))
                return
            fcntl.ioctl(self.listener, _IOCTL_SEND, response)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the target was signalled meanwhile; it will retry
                raise
            return
        self._report(verdict, what)

    def _respond_quietly(self, nid: int, error: int) -> None:
        try:
            fcntl.ioctl(self.listener, _IOCTL_SEND, _RESP.pack(nid, 0, -error, 0))
        except OSError:
            pass  # already answered, or gone

    def _report(self, decision: str, what: Denial | None) -> None:
        if what is None:
            return
        try:
            self.on_decision(decision, what)
        except Exception:  # noqa: BLE001 - reporting (the audit log) must never stop the answering
            pass

    # ---- the pipeline's steps --------------------------------------------------------------------------

    def read(self, tid: int, address: int) -> bytes | Deny:
        """The string at ``address``, read once per notification (invariant 7): what the C fast path
        read, or what this notification read there before (undo's recorder, ``on_exec``), is what is
        decided on."""
        call = self._call
        for where, raw in call.preread or ():
            if where == address:
                return raw
        read = self.reader.read_string(tid, address)
        if isinstance(read, int):
            return Deny(read)
        if call.preread is not None:
            call.preread = (*call.preread, (address, read))
        return read

    def lexical(self, tid: int, dirfd: int | None, raw: bytes) -> str | None:
        """The path as read, made absolute against the target's cwd or dirfd: only for the fast path
        (anything Landlock then allows is allowed whatever the path really is). None: not for the fast
        path (magic /proc and /dev/fd names are the target's, not ours)."""
        path = os.fsdecode(raw)
        if not path.startswith("/"):
            fd = _AT_FDCWD if dirfd is None else dirfd & 0xFFFFFFFF
            try:
                base = os.readlink(f"/proc/{tid}/cwd" if fd == _AT_FDCWD else f"/proc/{tid}/fd/{fd}")
            except OSError:
                return None
            path = f"{base}/{path}"
        if path.startswith(_MAGIC_PREFIXES):
            return None
        return os.path.normpath(path)

    def _continue(self, path: str | None, needed: int) -> Continue | None:
        """CONTINUE, only if the Landlock baseline alone grants ``needed`` on ``path`` (invariant 1)."""
        if path is None or self.guarded:
            return None
        return CONTINUE if self.rights.allows(path, needed) else None

    def _may_create(self, lexical: str) -> bool:
        """An O_CREAT open on the fast path: Landlock asks make_reg of the parent only where the kernel
        creates; a file already there (``> /dev/null``) needs only what ``_open_rights`` asked (the C fast
        path makes the same stat)."""
        if self.rights.allows(os.path.dirname(lexical), _A["make_reg"]):
            return True
        try:
            return not stat.S_ISDIR(os.stat(lexical).st_mode)
        except (OSError, ValueError):
            return False

    def _pin(self, tid: int, dirfd: int | None, raw: bytes, follow: bool, empty: bool = False):
        return resolve_bytes(tid, dirfd, raw, follow=follow, empty_path=empty)

    def _ask(self, op: str, path: str, rule: str, is_dir: bool) -> bool:
        if self.consent is None:
            return False
        nid, tid = self._current, self._tid
        return self.consent(op, path, rule, is_dir, lambda: self._still_valid(nid), tid, hold=self._hold)

    def _refused(self, refusal: Refusal, error: int = errno.EACCES) -> Deny:
        return Deny(error, Denial(refusal.op, refusal.path, refusal.rule, refusal.is_dir, self._tid))

    def decide(
        self, op: str, pin: Pin, baseline: bool = False, making_dir: bool = False, shm: bool = False
    ) -> Permit | Deny:
        """``making_dir``: the entry does not exist yet and would be a directory (its hint is a dir's).
        ``shm``: a call shm_open or sem_open makes on a regular file (Checker.decide)."""
        process = process_of(self._tid) if pin.path.startswith("/proc/") else 0  # read once, for both checks
        if _foreign_proc(pin.path, self._tid, process):
            # What the supervisor carries out, it does as itself, outside the command's Landlock domain:
            # another process's /proc (the supervisor's own environ or mem included) is refused here, as
            # Landlock's ptrace scoping refuses it to the command.
            return Deny(errno.EACCES, Denial(op, pin.path, access.FOREIGN_PROC, pin.is_dir, self._tid))
        outcome = self.checker.decide(op, pin, baseline, process, shm)
        if isinstance(outcome, Refusal):
            return self._refused(replace(outcome, is_dir=True) if making_dir else outcome)
        return outcome

    def _setid(self, path: str) -> Deny:
        return Deny(errno.EPERM, Denial("write", path, _NEVER_SETID, False, self._tid))

    def _fd_pin(self, tid: int, fd: int) -> Pin | Deny:
        """The target's descriptor ``fd`` as a pin of its own: our copy (the same open file), decided on the
        real path of the object it refers to, never on what the number means later."""
        return _pin_of(pidfd_getfd(tid, fd & 0xFFFFFFFF), errno.EBADF)

    def _existing(self, resolved) -> Pin | Deny:
        """What a call on an existing object acts on: the pin (the target's own fd pinned as itself), else
        the kernel's answer (ENOENT where nothing is there)."""
        if isinstance(resolved, FdRef):
            resolved = self._fd_pin(resolved.tid, resolved.fd)
        if isinstance(resolved, Deny):
            return resolved
        if not isinstance(resolved, Pin):
            return Deny(resolved.error)
        if not resolved.exists:
            resolved.close()
            return Deny(errno.ENOENT)
        return resolved

    def _object_of(self, tid: int, trap: Trap, args: list[int], follow: bool) -> Pin | Deny:
        """The object a metadata call acts on: its path argument (or its fd form), pinned."""
        if trap.path is None:
            return self._fd_pin(tid, arg(args, trap.fd))
        flags = args[trap.flags] if trap.flags is not None else 0
        if trap.name == "utimensat" and arg(args, trap.path) == 0:
            return self._fd_pin(tid, arg(args, trap.dirfd))  # utimensat(fd, NULL, ...) is futimens
        raw = self.read(tid, arg(args, trap.path))
        if isinstance(raw, Deny):
            return raw
        dirfd = args[trap.dirfd] if trap.dirfd is not None else None
        return self._existing(self._pin(tid, dirfd, raw, follow, empty=bool(flags & _AT_EMPTY_PATH)))

    # ---- opens -----------------------------------------------------------------------------------------

    def _on_open(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        raw = self.read(tid, arg(args, trap.path))
        if isinstance(raw, Deny):
            return raw
        untrusted_how = False
        if trap.name == "openat2":
            how = self.reader.read_exactly(tid, args[2], OPEN_HOW.size)
            if how is None:
                return Deny(errno.EFAULT)
            flags, mode, resolve_flags = OPEN_HOW.unpack(how)
            if resolve_flags:
                # RESOLVE_* restrictions are the caller's own; answered as a kernel without openat2 would,
                # so it falls back to openat (trapped too).
                return Deny(errno.ENOSYS)
            untrusted_how = True  # in memory: the kernel would read it again after a CONTINUE
        elif trap.name == "creat":
            flags, mode = os.O_CREAT | os.O_WRONLY | os.O_TRUNC, args[1]
        else:
            flags, mode = arg(args, trap.flags) & 0xFFFFFFFF, arg(args, trap.mode) & 0xFFFFFFFF
        creating = bool(flags & (os.O_CREAT | _O_TMPFILE))
        if creating and mode & SETID_BITS:
            return self._setid(os.fsdecode(raw))
        if flags & os.O_PATH and not untrusted_how:
            return CONTINUE  # Landlock grants no right to O_PATH: it reads and writes nothing
        dirfd = args[0] if trap.dirfd is not None else None
        needed = _open_rights(flags)
        if not untrusted_how and (not self._linked or flags & os.O_DIRECTORY):
            lexical = self.lexical(tid, dirfd, raw)
            fast = self._continue(lexical, needed)
            if fast and (not creating or (lexical is not None and self._may_create(lexical))):
                return fast
        exclusive = flags & os.O_CREAT and flags & os.O_EXCL
        resolved = self._pin(tid, dirfd, raw, follow=not (flags & os.O_NOFOLLOW or exclusive))
        if isinstance(resolved, FdRef):
            return self._reopen(resolved, flags)
        if not isinstance(resolved, Pin):
            return Deny(resolved.error)
        try:
            return self._open_pinned(resolved, flags, mode, needed, creating, tid, untrusted_how)
        except BaseException:
            resolved.close()
            raise

    def _open_pinned(
        self, pin: Pin, flags: int, mode: int, needed: int, creating: bool, tid: int, untrusted: bool
    ) -> Decision:
        error = _open_errno(pin, flags, creating)
        if error:
            pin.close()
            return Deny(error)
        if flags & os.O_PATH:
            return self._emulate_open(pin, ["locate"], flags, mode, tid)  # openat2 O_PATH: no content
        if terminals.is_pty(pin.st):
            return self._terminal(pin, flags, tid)  # never on a path's grant (invariant 11)
        if flags & _O_TMPFILE == _O_TMPFILE:
            ops = ["create"]
        else:
            ops = [op for op, wanted in _open_ops(flags, pin.exists) if wanted]
        landlock_path = pin.path if pin.exists else os.path.dirname(pin.path)
        landlock_needed = needed if pin.exists else _A["make_reg"]
        baseline = self.rights.allows(landlock_path, landlock_needed)
        linked = self._linked and pin.is_file
        if baseline and not untrusted and not linked and not self.guarded:
            pin.close()
            return CONTINUE  # the kernel, under Landlock, allows exactly this: let it do it
        if not baseline:
            own = self._shell_own(pin, ops, flags, tid)
            if own is not None:
                return own
        return self._emulate_open(pin, ops, flags, mode, tid, baseline)

    def _shell_own(self, pin: Pin, ops: list[str], flags: int, tid: int) -> Decision | None:
        """A shell opening one of its own start-up files in $HOME that the policy does not grant: a read
        (``bash -lc`` reads ~/.profile, ``bash -i`` ~/.bashrc and its history, a login shell ~/.bash_logout
        at exit) gets an empty file instead of EACCES, and a write of its history at exit is refused; both
        silently (access.SHELL_OWN), both in the audit log. Bare, the shell would read the file; refused, bash
        prints ``Permission denied`` for the rc, a line the agent would see with every command. An empty
        file keeps what the agent asked for (a login shell: /etc/profile, ``shopt login_shell``, the first
        of ~/.bash_profile, ~/.bash_login, ~/.profile, the logout file), where ``--noprofile`` would drop
        /etc/profile and ENOENT would send bash on to the next candidate. The content stays unread: ``cat
        ~/.profile`` is a reported denial (a ``source ~/.profile`` in that shell reads it empty). The
        process is told by its executable (/proc/TID/exe, read before NOTIF_ID_VALID): a program named
        bash gains nothing by it. None: not such an open."""
        directory, name = os.path.split(pin.path)
        reading = ops == ["read"] and pin.is_file
        writing_history = name.endswith("_history") and not {"write", "create"}.isdisjoint(ops)
        if not (reading or writing_history) or directory != self.access.home:
            return None
        try:
            shell = os.path.basename(os.readlink(f"/proc/{tid}/exe"))
        except OSError:
            return None
        if name not in START_UP.get(shell, ()):
            return None
        refused = [(op, v) for op in ops if not (v := self.access.verdict(pin.path, op)).allowed]
        if not refused:
            return None
        op, verdict = refused[0]
        denial = Denial(op, pin.path, verdict.rule + access.SHELL_OWN, False, self._tid)
        if not reading:
            pin.close()
            return Deny(errno.EACCES, denial)

        def act() -> Outcome:
            pin.close()
            return Inject(emulate.empty_file(), bool(flags & os.O_CLOEXEC), denial, recorded="deny")

        return Emulate(act, release=pin.close)

    def _emulate_open(
        self, pin: Pin, ops: list[str], flags: int, mode: int, tid: int, baseline: bool = False
    ) -> Decision:
        permits = []
        for op in ops:
            permit = self.decide(op, pin, baseline, shm=True)  # an open is how shm_open and sem_open make
            if isinstance(permit, Deny):
                pin.close()
                return permit
            permits.append(permit)
        # a permit for the session's own shared memory binds the open to the object checked (open_file)
        permit = next((p for p in permits if p.by == emulate.SHM_RULE), permits[-1])
        mode = mode & ~umask_of(tid) & 0o7777

        def act() -> Outcome:
            try:
                fd = emulate.open_file(permit, flags, mode, self.checker)
            finally:
                pin.close()
            return Inject(fd, bool(flags & os.O_CLOEXEC), Denial(permit.op, pin.path, permit.by))

        return Emulate(act, release=pin.close)

    def _reopen(self, ref: FdRef, flags: int) -> Decision:
        """``/dev/stdout`` and kin: the target's own fd N, reopened when it asks no more than that fd's
        access mode (it already holds the object). An O_PATH fd holds no access: its object's path decides,
        as for any other path. Never the supervisor's own terminal."""
        pin = self._fd_pin(ref.tid, ref.fd)
        if isinstance(pin, Deny):
            return Deny(errno.ENOENT if pin.error == errno.EBADF else pin.error)
        held = fcntl.fcntl(pin.dirfd, fcntl.F_GETFL)
        if pin.path in self.own_terminals:
            pin.close()
            return Deny(errno.EACCES, Denial("read", pin.path, "never-grantable", False, self._tid))
        if held & os.O_PATH:
            needed = _open_rights(flags)
            return self._open_pinned(pin, flags, 0, needed, False, ref.tid, True)
        wants_read = flags & _O_ACCMODE != _O_WRONLY
        wants_write = flags & _O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        has_read = held & _O_ACCMODE != _O_WRONLY
        has_write = held & _O_ACCMODE != os.O_RDONLY
        if (wants_read and not has_read) or (wants_write and not has_write):
            op = "write" if wants_write and not has_write else "read"
            pin.close()
            return Deny(
                errno.EACCES, Denial(op, pin.path, "the descriptor is not open for it", False, self._tid)
            )

        def act() -> Outcome:
            try:
                reopen = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)) | os.O_CLOEXEC
                fd = os.open(f"/proc/self/fd/{pin.dirfd}", reopen)
            finally:
                pin.close()
            return Inject(fd, bool(flags & os.O_CLOEXEC))

        return Emulate(act, release=pin.close)

    def _on_pty_peer(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        """ioctl(master, TIOCGPTPEER, flags), the only ioctl the filter sends: glibc's openpty and forkpty
        (pexpect, script, tmux, node-pty) open a new pty's peer this way, inside the kernel, where Landlock
        grants no /dev/pts node the plan did not name (``terminals``), with no report. Our copy of the
        master names the node (an O_PATH fd of it: the pty is not opened yet); the caller holds that master,
        so the pty is its own (invariant 11), opened through our copy of it."""
        master = pidfd_getfd(tid, args[0] & 0xFFFFFFFF)
        try:
            node = fcntl.ioctl(master, TIOCGPTPEER, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            os.close(master)
            return Deny(e.errno or errno.EIO)  # not a pty master: the kernel's own answer (EIO, ENOTTY)
        pin = _pin_of(node, errno.EIO)
        if isinstance(pin, Deny):
            os.close(master)
            return pin
        flags = args[2] & (_O_ACCMODE | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        return self._terminal(pin, flags, tid, master)

    def _terminal(self, pin: Pin, flags: int, tid: int, held: int | None = None) -> Decision:
        """An open of a pty (invariant 11): only of one the caller's process holds (``held``: our copy of
        its master, else looked up in its descriptors), made through that descriptor; any other /dev/pts
        node (the agent's, the supervisor's, another session's, a sibling command's) is refused and
        reported, never asked about. Also for the handed terminal's name once Landlock refused it: its
        node may since be another terminal's (a closed pty's number is reused)."""
        ops = [op for op, wanted in _open_ops(flags, True) if wanted]
        permits = []
        for op in ops:  # a deny of the human's, or a sealed terminal (the supervisor's), comes first
            outcome = self.checker.decide_terminal(op, pin)
            if isinstance(outcome, Refusal):
                _close_fd(held)
                pin.close()
                return self._refused(outcome)
            permits.append(outcome)
        permit = permits[-1]
        if held is None and pin.st is not None:
            held = terminals.held(tid, pin.st, pin.path)
        if held is None:
            pin.close()
            return Deny(errno.EACCES, Denial(ops[0], pin.path, terminals.NOT_ITS_TERMINAL, False, self._tid))

        def release() -> None:
            os.close(held)
            pin.close()

        def act() -> Outcome:
            try:
                fd = emulate.open_terminal(permit, held, flags)
            finally:
                release()
            return Inject(fd, bool(flags & os.O_CLOEXEC), Denial(permit.op, pin.path, permit.by))

        return Emulate(act, release=release)

    # ---- exec ------------------------------------------------------------------------------------------

    def _on_exec(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        raw = self.read(tid, arg(args, trap.path))
        if isinstance(raw, Deny):
            return raw
        dirfd = args[trap.dirfd] if trap.dirfd is not None else None
        fast = self._continue(self.lexical(tid, dirfd, raw), _A["execute"])
        if fast:
            return fast
        flags = args[trap.flags] if trap.flags is not None else 0
        resolved = self._pin(tid, dirfd, raw, follow=not flags & _AT_SYMLINK_NOFOLLOW, empty=True)
        if isinstance(resolved, FdRef):
            return CONTINUE  # fexecve: the kernel checks Landlock's execute right on the fd's own file
        if not isinstance(resolved, Pin):
            return Deny(resolved.error)
        resolved.close()
        if not resolved.exists:
            return Deny(errno.ENOENT)
        moved = self.guarded and self.access.denied(resolved.path, "exec")
        if self.rights.allows(resolved.path, _A["execute"]) and not moved:
            return CONTINUE  # the kernel checks the same rule on the same file
        # exec cannot be carried out on the command's behalf: only the baseline can allow it.
        verdict = self.access.verdict(resolved.path, "exec")
        rule = "outside the baseline" if verdict.allowed else verdict.rule
        return Deny(errno.EACCES, Denial("exec", resolved.path, rule, False, self._tid))

    # ---- directory entries -----------------------------------------------------------------------------

    def _entry_bytes(
        self, tid: int, dirfd_arg: int | None, path_arg: int | None, args: list[int]
    ) -> Entry | Deny:
        """The (bytes, dirfd) of a directory-entry argument, read once."""
        raw = self.read(tid, arg(args, path_arg))
        return raw if isinstance(raw, Deny) else (raw, args[dirfd_arg] if dirfd_arg is not None else None)

    def entry_fast(self, tid: int, entry: Entry, needed: int) -> Continue | None:
        """CONTINUE when the Landlock baseline grants ``needed`` on the entry's parent, as read."""
        lexical = self.lexical(tid, entry[1], entry[0])
        return self._continue(os.path.dirname(lexical) if lexical else None, needed)

    def entry_pin(self, tid: int, entry: Entry, needed: int | None) -> Pin | Continue | Deny:
        """The entry pinned (its last component not followed); CONTINUE when, resolved, its parent's
        Landlock rights cover ``needed`` after all (None: never)."""
        resolved = self._pin(tid, entry[1], entry[0], follow=False)
        if isinstance(resolved, FdRef):
            return Deny(errno.ENOTDIR)
        if not isinstance(resolved, Pin):
            return Deny(resolved.error)
        if not resolved.name:
            resolved.close()
            return Deny(errno.EBUSY)  # "." and ".." name no entry the call could act on alone
        if (
            needed is not None
            and not self.guarded
            and self.rights.allows(os.path.dirname(resolved.path), needed)
        ):
            resolved.close()
            return CONTINUE
        return resolved

    def _entry(
        self, tid: int, dirfd_arg: int | None, path_arg: int | None, args: list[int], needed: int
    ) -> Pin | Continue | Deny:
        """Read once; CONTINUE on the parent's Landlock rights; else the entry pinned."""
        entry = self._entry_bytes(tid, dirfd_arg, path_arg, args)
        if isinstance(entry, Deny):
            return entry
        return self.entry_fast(tid, entry, needed) or self.entry_pin(tid, entry, needed)

    def _on_unlink(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        rmdir = trap.flags is not None and bool(args[trap.flags] & _AT_REMOVEDIR)
        return self._remove(trap, tid, args, directory=rmdir)

    def _on_rmdir(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        return self._remove(trap, tid, args, directory=True)

    def _remove(self, trap: Trap, tid: int, args: list[int], directory: bool) -> Decision:
        needed = _A["remove_dir" if directory else "remove_file"]
        pin = self._entry(tid, trap.dirfd, trap.path, args, needed)
        if not isinstance(pin, Pin):
            return pin
        if not pin.exists:
            pin.close()
            return Deny(errno.ENOENT)
        permit = self._decide_name("delete", pin, shm=not pin.is_dir)  # shm_unlink, sem_unlink
        if isinstance(permit, Permit) and permit.by == emulate.SHM_RULE:
            return self._act(pin, permit, lambda p: emulate.remove_shm(p, self.checker))
        return self._act(pin, permit, lambda p: emulate.remove(p, directory))

    def _on_mkdir(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        pin = self._entry(tid, trap.dirfd, trap.path, args, _A["make_dir"])
        if not isinstance(pin, Pin):
            return pin
        if pin.exists:
            pin.close()
            return Deny(errno.EEXIST)
        permit = self.decide("create", pin, making_dir=True)
        mode = arg(args, trap.mode) & ~umask_of(tid) & 0o7777
        return self._act(pin, permit, lambda p: emulate.mkdir(p, mode), is_dir=True)

    def _on_mknod(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        at = position(trap.mode)  # mknod(path, mode, dev), mknodat(dirfd, path, mode, dev)
        mode, device = args[at] & 0xFFFFFFFF, args[at + 1]
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        needed = {
            stat.S_IFREG: _A["make_reg"],
            stat.S_IFIFO: _A["make_fifo"],
            stat.S_IFSOCK: _A["make_sock"],
            stat.S_IFCHR: _A["make_char"],
            stat.S_IFBLK: _A["make_block"],
        }.get(kind)
        if needed is None:
            return Deny(errno.EINVAL)
        if mode & SETID_BITS:
            raw = self.read(tid, arg(args, trap.path))
            return raw if isinstance(raw, Deny) else self._setid(os.fsdecode(raw))
        pin = self._entry(tid, trap.dirfd, trap.path, args, needed)
        if not isinstance(pin, Pin):
            return pin
        if pin.exists:
            pin.close()
            return Deny(errno.EEXIST)
        permit = self.decide("create", pin)
        mode = (mode & ~stat.S_IFMT(mode) & ~umask_of(tid) & 0o7777) | kind
        return self._act(pin, permit, lambda p: emulate.mknod(p, mode, device))

    def _on_symlink(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        target = self.read(tid, args[0])  # symlink and symlinkat both take the target first
        if isinstance(target, Deny):
            return target
        pin = self._entry(tid, trap.dirfd, trap.path, args, _A["make_sym"])
        if not isinstance(pin, Pin):
            return pin
        if pin.exists:
            pin.close()
            return Deny(errno.EEXIST)
        permit = self._decide_name("create", pin)
        return self._act(pin, permit, lambda p: emulate.symlink(p, os.fsdecode(target)))

    def _on_rename(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        flags = args[trap.flags] & 0xFFFFFFFF if trap.flags is not None else 0
        moving = _A["remove_file"] | _A["remove_dir"] | _A["make_reg"] | _A["make_dir"] | _A["refer"]
        first = self._entry_bytes(tid, trap.dirfd, trap.path, args)
        if isinstance(first, Deny):
            return first
        second = self._entry_bytes(tid, *trap.second_pair, args)
        if isinstance(second, Deny):
            return second
        ends = (first, second)
        if not self.guarded and all(self.entry_fast(tid, end, moving) for end in ends):
            return CONTINUE  # Landlock checks both ends itself, REFER included
        source, target = (self.entry_pin(tid, end, None) for end in ends)
        if not isinstance(source, Pin):  # a Deny: ``entry_pin`` without ``needed`` never CONTINUEs
            _close(target)
            return source
        if not isinstance(target, Pin):
            source.close()
            return target
        pins = (source, target)
        error = _rename_errno(source, target, flags)
        if error:
            source.close()
            target.close()
            return Deny(error)
        if not self.guarded and all(self.rights.allows(os.path.dirname(p.path), moving) for p in pins):
            source.close()
            target.close()
            return CONTINUE
        # Both ends (both ways for an exchange), each a name made or taken away (``_decide_name``); the
        # names made first, so that one on the way to a denied node says so whatever else is refused.
        checks = [("create", target), ("delete", source)]
        if flags & _RENAME_EXCHANGE:
            checks.insert(1, ("create", source))
        if target.exists:
            checks.append(("delete", target))
        permits = []
        for op, pin in checks:
            permit = self._decide_name(op, pin)
            if isinstance(permit, Deny):
                source.close()
                target.close()
                return permit
            permits.append(permit)
        to_permit, from_permit = permits[0], permits[2 if flags & _RENAME_EXCHANGE else 1]

        def release() -> None:
            source.close()
            target.close()

        def act() -> Outcome:
            try:
                emulate.rename(from_permit, to_permit, flags)
            finally:
                release()
            return Value(0, Denial("create", f"{target.path} (from {source.path})", to_permit.by))

        return Emulate(act, release=release)

    def _on_link(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        flags = args[trap.flags] if trap.flags is not None else 0
        raw = self.read(tid, arg(args, trap.path))
        if isinstance(raw, Deny):
            return raw
        if flags & _AT_EMPTY_PATH:
            return Deny(errno.ENOENT)  # linkat(fd, "", AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH
        dirfd = args[trap.dirfd] if trap.dirfd is not None else None
        # linkat("/proc/self/fd/N", ...) is an O_TMPFILE given a name: the target's fd, pinned as itself
        source = self._existing(self._pin(tid, dirfd, raw, follow=bool(flags & _AT_SYMLINK_FOLLOW)))
        if isinstance(source, Deny):
            return source
        # A hard link is a second name for the file: the source must be readable and writable under the
        # policy, whichever way the destination is decided.
        for op in ("read", "write"):
            checked = self.decide(op, source, shm=True)  # sem_open names its new semaphore with a link
            if isinstance(checked, Deny):
                source.close()
                return checked
            permit = checked
        target = self._entry(tid, *trap.second_pair, args, _A["make_reg"] | _A["refer"])
        if not isinstance(target, Pin):
            source.close()
            return target  # CONTINUE: Landlock checks the destination (and REFER) itself
        if target.exists:
            source.close()
            target.close()
            return Deny(errno.EEXIST)
        to_permit = self._decide_name("create", target, shm=source.is_file)
        if isinstance(to_permit, Deny):
            source.close()
            target.close()
            return to_permit

        def act() -> Outcome:
            try:
                emulate.link(permit, to_permit)
            finally:
                source.close()
                target.close()
            return Value(0, Denial("create", target.path, to_permit.by))

        def release() -> None:
            source.close()
            target.close()

        return Emulate(act, release=release)

    def _on_truncate(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        raw = self.read(tid, arg(args, trap.path))
        if isinstance(raw, Deny):
            return raw
        if not self._linked:
            fast = self._continue(self.lexical(tid, None, raw), _A["truncate"] | _A["write_file"])
            if fast:
                return fast
        pin = self._existing(self._pin(tid, None, raw, follow=True))
        if isinstance(pin, Deny):
            return pin
        if pin.is_dir:
            pin.close()
            return Deny(errno.EISDIR)
        permit = self.decide("write", pin)
        length = args[1]
        return self._act(pin, permit, lambda p: emulate.truncate(p, length, self.checker))

    def _decide_name(self, op: str, pin: Pin, shm: bool = False) -> Permit | Deny:
        """``decide`` for a name a call makes ("create": a symlink, a link, either end of a rename) or takes
        away ("delete": an unlink, an rmdir, a rename's source or the target it replaces), which must also
        never move a denied, never-grantable or runs-later node (invariants 10 and 12). The one check of
        both ways a name can move one, tests/test_late_denies.py and tests/test_runs_later.py:

        - made at a name on the way to a denied node as the policy spells it (``AccessIndex.on_the_way``:
          its parent resolved, its last component not), it would send the node wherever it leads: the
          human's next ``huggingface-cli login`` through ``~/.cache/huggingface -> ./x`` writes the token
          where the command reads it. Refused before the policy is asked: no flag lifts it;
        - made or taken away at a name through a link on the way to a held node as the policy spells it
          (``AccessIndex.taken_away``: stow's ``~/.config/gh -> ~/dotfiles/gh``, or ``~/.config`` holding
          it): once gone the deny names nothing and the next command reads the token. Refused the same;
        - made above such a node where it resolves (one not there yet included), or taking away a directory
          that holds one (``AccessIndex.denied_below``), it carries the node out from under its rule, or
          makes it resolve into what the command wrote (``ln -s ./x ~/.config`` puts ~/.config/nvim in its
          reach). Asked once the policy allows the call: a refusal by the policy keeps its own line.

        A directory made (mkdir) moves nothing: the node stays where its path leads."""
        way = self.access.taken_away(pin.path)
        if way is None and op == "create":
            way = self.access.on_the_way(pin.path)
        if way is not None:
            denied, rule = way
            why = f"{ON_THE_WAY}: {self.access.policy.display(denied)} ({rule})"
            return Deny(errno.EACCES, Denial(op, pin.path, why, pin.is_dir, self._tid))
        permit = self.decide(op, pin, shm=shm)
        if isinstance(permit, Permit) and (op == "create" or pin.is_dir):
            for denied_path, rule in self.access.denied_below(pin.path):
                why = f"{rule} (inside: {denied_path})"
                return Deny(errno.EACCES, Denial(op, pin.path, why, True, self._tid))
        return permit

    def _act(
        self, pin: Pin, permit: Permit | Deny, action: Callable[[Permit], object], is_dir: bool = False
    ) -> Decision:
        """Carry out ``action(permit)`` through the pin once the request is confirmed; the result is 0."""
        if isinstance(permit, Deny):
            pin.close()
            return permit

        def act() -> Outcome:
            try:
                action(permit)
            finally:
                pin.close()
            return Value(0, Denial(permit.op, pin.path, permit.by, is_dir))

        return Emulate(act, release=pin.close)

    # ---- metadata --------------------------------------------------------------------------------------

    def _metadata(self, trap: Trap, tid: int, args: list[int]) -> Pin | Deny:
        flags = args[trap.flags] if trap.flags is not None else 0
        follow = not (trap.nofollow or flags & _AT_SYMLINK_NOFOLLOW)
        return self._object_of(tid, trap, args, follow)

    def _on_chmod(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        mode = arg(args, trap.mode) & 0o7777
        pin = self._metadata(trap, tid, args)
        if isinstance(pin, Deny):
            return pin
        if mode & SETID_BITS and not pin.is_dir:
            pin.close()
            return self._setid(pin.path)
        if mode & SETID_BITS:
            mode &= ~stat.S_ISUID  # a directory's setgid bit only makes new entries share its group
        if pin.is_link:
            pin.close()
            return Deny(errno.EOPNOTSUPP)  # Linux cannot chmod a symlink itself
        return self._write_meta(pin, lambda permit: emulate.chmod(permit, mode))

    def _on_chown(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        first = 2 if trap.dirfd is not None else 1
        uid, gid = _id_arg(args[first]), _id_arg(args[first + 1])
        pin = self._metadata(trap, tid, args)
        if isinstance(pin, Deny):
            return pin
        return self._write_meta(pin, lambda permit: emulate.chown(permit, uid, gid))

    def _on_utime(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        times_arg = {"utime": 1, "utimes": 1, "futimesat": 2, "utimensat": 2}[trap.name]
        times = self._read_times(trap.name, tid, args[times_arg])
        if isinstance(times, Deny):
            return times
        pin = self._metadata(trap, tid, args)
        if isinstance(pin, Deny):
            return pin
        return self._write_meta(pin, lambda permit: emulate.utimens(permit, times))

    def _read_times(self, name: str, tid: int, address: int) -> bytes | None | Deny:
        """The new times as two ``struct timespec``, read once (None: now)."""
        if address == 0:
            return None
        size = {"utime": 16, "utimes": 32, "futimesat": 32, "utimensat": 32}[name]
        data = self.reader.read_exactly(tid, address, size)
        if data is None:
            return Deny(errno.EFAULT)
        if name == "utimensat":
            return data
        if name == "utime":
            atime, mtime = struct.unpack("=qq", data)
            return _TIMESPEC2.pack(atime, 0, mtime, 0)
        a_sec, a_usec, m_sec, m_usec = struct.unpack("=qqqq", data)
        if not (0 <= a_usec < 1_000_000 and 0 <= m_usec < 1_000_000):
            return Deny(errno.EINVAL)
        return _TIMESPEC2.pack(a_sec, a_usec * 1000, m_sec, m_usec * 1000)

    def _on_setxattr(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        name = self.read(tid, args[1])
        if isinstance(name, Deny):
            return name
        size = args[3]
        if size > _XATTR_SIZE_MAX:
            return Deny(errno.E2BIG)
        value = self.reader.read_exactly(tid, args[2], size) if size else b""
        if value is None:
            return Deny(errno.EFAULT)
        if not name or len(name) > _XATTR_NAME_MAX:
            return Deny(errno.ERANGE)
        flags = args[4] & 0xFFFFFFFF
        pin = self._metadata(trap, tid, args)
        if isinstance(pin, Deny):
            return pin
        text = os.fsdecode(name)
        return self._write_meta(pin, lambda permit: emulate.setxattr(permit, text, value, flags))

    def _on_removexattr(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        name = self.read(tid, args[1])
        if isinstance(name, Deny):
            return name
        pin = self._metadata(trap, tid, args)
        if isinstance(pin, Deny):
            return pin
        text = os.fsdecode(name)
        return self._write_meta(pin, lambda permit: emulate.removexattr(permit, text))

    def _write_meta(self, pin: Pin, action: Callable[[Permit], object]) -> Decision:
        """Mode, owner, times and xattrs are the file's: changed only where the policy allows writing it."""
        permit = self.decide("write", pin)
        return self._act(pin, permit, action)

    # ---- watches ---------------------------------------------------------------------------------------

    def _on_inotify(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        mask = args[2] & 0xFFFFFFFF
        raw = self.read(tid, args[1])
        if isinstance(raw, Deny):
            return raw
        resolved = self._pin(tid, None, raw, follow=not mask & _IN_DONT_FOLLOW)
        return self._watch(
            tid, args[0], resolved, lambda permit, fd: emulate.inotify_add_watch(permit, fd, mask)
        )

    def _on_fanotify(self, trap: Trap, tid: int, args: list[int]) -> Decision:
        flags, mask = args[1] & 0xFFFFFFFF, args[2]
        if args[4] == 0:
            resolved = self._fd_pin(tid, args[3])
        else:
            raw = self.read(tid, args[4])
            if isinstance(raw, Deny):
                return raw
            resolved = self._pin(tid, args[3], raw, follow=not flags & _FAN_MARK_DONT_FOLLOW)

        def mark(permit: Permit, fd: int) -> int:
            emulate.fanotify_mark(permit, fd, flags, mask)
            return 0

        return self._watch(tid, args[0], resolved, mark)

    def _watch(self, tid: int, notify_fd: int, resolved, add: Callable[[Permit, int], int]) -> Decision:
        """A watch reveals the names and timing of what happens to the watched object: decided as a read,
        added by the supervisor on the command's own instance (our copy is the same one)."""
        resolved = self._existing(resolved)
        if isinstance(resolved, Deny):
            return resolved
        permit = self.decide("read", resolved)
        if isinstance(permit, Deny):
            resolved.close()
            return permit
        try:
            instance = pidfd_getfd(tid, notify_fd & 0xFFFFFFFF)
        except OSError:
            resolved.close()
            raise

        def act() -> Outcome:
            try:
                return Value(add(permit, instance))
            finally:
                os.close(instance)
                resolved.close()

        def release() -> None:
            os.close(instance)
            resolved.close()

        return Emulate(act, release=release)


def _pin_of(fd: int, error: int) -> Pin | Deny:
    """Our ``fd`` (taken over) as a pin of the object itself, decided on its real path; ``error`` if it
    cannot be read (the fd is closed then)."""
    try:
        st = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        os.close(fd)
        return Deny(e.errno or error)
    return Pin(fd, "", path.removesuffix(" (deleted)"), st)


def _foreign_proc(path: str, tid: int, tgid: int) -> bool:
    """``path`` is inside /proc/<pid> of a process other than the target's own (thread ``tid`` of
    ``tgid``)."""
    if not path.startswith("/proc/"):
        return False
    pid = path[6:].split("/", 1)[0]
    return pid.isdigit() and int(pid) != tid and int(pid) != tgid


def _carry_out(emulation: Emulate) -> Outcome:
    try:
        return emulation.act()
    except OSError as e:
        emulation.release()
        return Deny(e.errno or errno.EACCES)
    except Exception:  # noqa: BLE001 - an emulation bug fails this one syscall closed
        _debug_trace()
        emulation.release()
        return Deny(errno.EACCES)


def _debug_trace() -> None:
    """A handler bug fails its syscall closed; NONO_DEBUG=1 prints where (for developers)."""
    if os.environ.get("NONO_DEBUG"):
        import traceback

        traceback.print_exc()


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _close(entry: object) -> None:
    if isinstance(entry, Pin):
        entry.close()


def _id_arg(value: int) -> int:
    """uid_t/gid_t -1 (0xFFFFFFFF) means "leave unchanged", as os.chown's -1."""
    value &= 0xFFFFFFFF
    return -1 if value == 0xFFFFFFFF else value


def _open_rights(flags: int) -> int:
    mode = flags & _O_ACCMODE
    needed = 0
    if mode != _O_WRONLY:
        needed |= _A["read_dir"] if flags & os.O_DIRECTORY else _A["read_file"]
    if mode in (_O_WRONLY, _O_RDWR):
        needed |= _A["write_file"]
    if flags & os.O_TRUNC:
        needed |= _A["truncate"]
    return needed


def _open_ops(flags: int, exists: bool) -> list[tuple[str, bool]]:
    mode = flags & _O_ACCMODE
    return [
        ("read", mode != _O_WRONLY and exists),
        ("write", exists and (mode != os.O_RDONLY or bool(flags & os.O_TRUNC))),
        ("create", not exists),
    ]


def _open_errno(pin: Pin, flags: int, creating: bool) -> int:
    """What the kernel answers an open before any permission check, in its order."""
    tmpfile = flags & _O_TMPFILE == _O_TMPFILE
    if not pin.exists:
        return 0 if creating and not tmpfile else errno.ENOENT
    if tmpfile:
        return 0 if pin.is_dir else errno.ENOTDIR
    if flags & os.O_CREAT and flags & os.O_EXCL:
        return errno.EEXIST
    if pin.is_link:
        return errno.ELOOP  # O_NOFOLLOW met a symlink
    if pin.is_dir and (flags & os.O_CREAT or flags & _O_ACCMODE != os.O_RDONLY):
        return errno.EISDIR
    if flags & os.O_DIRECTORY and not pin.is_dir:
        return errno.ENOTDIR
    return 0


def _rename_errno(source: Pin, target: Pin, flags: int) -> int:
    if not source.exists:
        return errno.ENOENT
    if flags & _RENAME_EXCHANGE and not target.exists:
        return errno.ENOENT
    if flags & _RENAME_NOREPLACE and target.exists:
        return errno.EEXIST
    return 0


def wants_every_notification(cls: type[NotifyLoop]) -> bool:
    """Whether a loop class must see every open and exec (so the filter traps them all for it)."""
    return cls.on_exec is not None


ASK_AGAIN_NAME = "libnono_askagain.so"  # setup.py PRELOADS


def ask_again_library() -> str | None:
    """The library preloaded into commands whose opens and execve are untrapped (``_askagain.c``)."""
    from nono_supervisor.interpose import built_beside

    path = built_beside(__file__, ASK_AGAIN_NAME)
    return None if path is None else str(path)


# The C fast path's kinds (_notify.c ``enum kind``): which lexical fast path a trapped syscall has there.
_NATIVE_KINDS = {
    "exec": 3,
    "unlink": 4,
    "rmdir": 5,
    "mkdir": 6,
    "mknod": 7,
    "symlink": 8,
    "rename": 9,
    "truncate": 10,
}


def native_kind(trap: Trap) -> int:
    """The fast path ``trap`` has in C (0: none, always the Python handler), as ``_on_<kind>`` has it."""
    if trap.kind == "open":
        return {"openat2": 0, "creat": 2}.get(trap.name, 1)  # openat2's open_how is in memory: never fast
    return _NATIVE_KINDS.get(trap.kind, 0)


@cache
def native_table(recording: bool = False) -> dict[int, tuple[int, ...]]:
    """Syscall number -> (kind, path, dirfd, flags, mode, path2, dirfd2) for the C loop, from ``TRAPS``
    (the one list the filter is built from); -1 for an argument the syscall does not have. ``recording``
    (undo): rename, link and truncate have no fast path, so that their paths are recorded first (chmod and
    utime never have one); the C loop records creations (open, mkdir, mknod, symlink), keeps files before an
    unlink and directories' modes and times before an rmdir itself (``_notify.c``: created, made, kept) and
    sends the rest to Python."""

    def index(value: int | None) -> int:
        return -1 if value is None else value

    table: dict[int, tuple[int, ...]] = {}
    for nr, (trap, _handler) in _dispatch_table().items():
        second = trap.second or (None, None)
        recorded = recording and trap.kind in ("rename", "link", "truncate")
        table[nr] = (
            0 if recorded else native_kind(trap),
            index(trap.path),
            index(trap.dirfd),
            index(trap.flags),
            index(trap.mode),
            index(second[1]),
            index(second[0]),
        )
    return table


def _native_loop(cls: type[NotifyLoop], listener: int, rights: RightsIndex, linked: bool, recording: bool):
    """The C loop for a loop of class ``cls``, or None: disabled (NONO_NOTIFY_NATIVE=0, for comparisons),
    not built, or a class that wants to see every notification (``on_exec``). ``linked``: no regular-file
    open is CONTINUEd (``NotifyLoop``); ``recording``: undo keeps what the fast path creates and unlinks."""
    if os.environ.get("NONO_NOTIFY_NATIVE") == "0" or wants_every_notification(cls):
        return None
    try:
        from nono_supervisor.linux import _notify
    except ImportError:
        return None
    return _notify.Loop(listener, rights.native(), native_table(recording), linked, recording)


def handler_for(kind: str) -> Callable:
    """A trap kind's handler: a NotifyLoop method or a socket handler (test_every_trap_has_a_handler)."""
    return getattr(NotifyLoop, f"_on_{kind}", None) or getattr(sockets, f"on_{kind}")


@cache
def _dispatch_table() -> dict[int, tuple[Trap, Callable]]:
    """Syscall number -> (trap, handler), built from the same list as the filter. A syscall this architecture
    does not have (open, creat, rename... on arm64) resolves to a negative pseudo-number, for which
    libseccomp adds no rule: it has no entry (the C loop refuses a negative one)."""
    pyseccomp = load_pyseccomp()

    table = {}
    for trap in TRAPS:
        number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, trap.name)
        if number >= 0:
            table[number] = (trap, handler_for(trap.kind))
    return table

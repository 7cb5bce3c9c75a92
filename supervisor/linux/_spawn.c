/*
 * Start one sandboxed command: fork, then only raw syscalls until exec.
 *
 * Why C: the supervisor has threads, so a Python preexec_fn could deadlock on a lock another thread held
 * at fork time (KERNEL-NOTES "fork safety"). Everything is prepared by the caller before the fork: argv,
 * envp and path bytes, the Landlock ruleset fd, the seccomp BPF program. The child may not allocate.
 * The keeper reports "pid:N;" (the command's pid, which is also its process group) and a failed step
 * reports "stage:errno;" over a CLOEXEC pipe; EOF on that pipe means exec happened
 * (CPython's _posixsubprocess.c is the model). When the command ends, the keeper reports its wait status
 * as "exit:N;" over a second pipe (the status pipe), at once, whatever the command left running.
 *
 * Process shape:
 *
 *   supervisor thread ── keeper (new session, subreaper, not sandboxed, runs no foreign code)
 *                            └── command (own process group; NO_NEW_PRIVS → Landlock → seccomp → exec)
 *
 * The keeper is nono-keeper (this file built with NONO_KEEPER): the supervisor vforks and execs it with the
 * plan in a memfd, so no copy of the supervisor is made; it vforks the command. Where nono-keeper is not
 * built, the keeper is a fork of the supervisor running the same code.
 *
 * The keeper exists so that a command tree never outlives the supervisor (CONTRACT: no orphan remains).
 * It is the subreaper of the whole tree, so a double-forked or setsid daemon stays below it, and it lives
 * until that tree is empty: a background job the command left (`bash -c 'sleep 100 &'` returns at once,
 * as under bash) keeps running under it after the status was reported. It watches a pidfd of the
 * supervisor *process* (not PR_SET_PDEATHSIG, which fires when the forking *thread* exits: the server's
 * thread for a command ends when the command returns, and would take its background jobs with it), and
 * when that process is gone (kill -9 included), or when KILL_TREE_SIGNAL asks, it SIGKILLs its process
 * group and every descendant. It stays outside the Landlock domain so the command cannot signal or
 * ptrace it (Landlock scoping).
 */
#ifndef NONO_KEEPER
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#else
#define _GNU_SOURCE /* what Python.h defines for the module */
#endif

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <linux/capability.h> /* capget/capset structs: the kernel's own (also _notify.c) */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif
#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

/* Sent by the supervisor to the keeper: kill the whole command tree now. Real-time, so it can never be
 * one of the signals forwarded from the agent (those go to the process group and the keeper ignores them). */
#define KILL_TREE_SIGNAL (SIGRTMIN + 3)
/* The keeper is not in the command's process group, but a hangup of the terminal or a stray signal must
 * not kill it while it keeps the tree (SIGPIPE: a status pipe whose reader is gone is EPIPE). */
static const int forwarded_signals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1,
                                        SIGUSR2, SIGALRM, SIGWINCH, SIGPIPE};
/* Bounded: a command tree deeper or wider than this is killed in further rounds. */
#define MAX_TREE 4096


/* Append a decimal number to buf at *n. Async-signal-safe (no stdio). */
static void put_number(char *buf, size_t *n, long value) {
    char digits[24];
    size_t d = 0;
    do {
        digits[d++] = (char)('0' + value % 10);
        value /= 10;
    } while (value && d < sizeof digits);
    while (d)
        buf[(*n)++] = digits[--d];
}

/* Tell the parent "key:number;" over the CLOEXEC pipe (one write < PIPE_BUF, so it arrives whole). */
static void report(int errpipe, const char *key, long value) {
    char buf[80];
    size_t n = 0;
    while (key[n] && n < 40) {
        buf[n] = key[n];
        n++;
    }
    buf[n++] = ':';
    put_number(buf, &n, value);
    buf[n++] = ';';
    if (write(errpipe, buf, n) < 0) {
        /* nobody left to tell */
    }
}

/* A step failed before exec: report "stage:errno;" and exit. */
static _Noreturn void fail(int errpipe, const char *stage, int err) {
    report(errpipe, stage, err);
    _exit(127);
}

/* Read one decimal pid list from /proc/PID/task/PID/children into pids[]; returns how many were added. */
static int read_children(pid_t pid, pid_t *pids, int room) {
    char path[80] = "/proc/", buf[4096];
    size_t at = 6;
    int n = 0, fd;
    ssize_t len;
    put_number(path, &at, pid);
    memcpy(path + at, "/task/", 6);
    at += 6;
    put_number(path, &at, pid);
    memcpy(path + at, "/children", 10);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0)
        return 0;
    buf[len] = 0;
    for (char *p = buf; *p && n < room;) {
        long value = 0;
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        while (*p >= '0' && *p <= '9')
            value = value * 10 + (*p++ - '0');
        if (value > 0)
            pids[n++] = (pid_t)value;
        while (*p && *p != ' ')
            p++;
    }
    return n;
}

struct plan {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int stdio[3];
    int ruleset_fd;
    int landlock_flags;
    struct sock_fprog prog;
    int seccomp_flags;
    int listener_sock;
    int errpipe;
    int status_pipe; /* the keeper writes "exit:N;" here when the command ends */
    int ctty;
    pid_t supervisor;
    /* The agent's routing namespace (DESIGN routing layer 4): a mount namespace (inside a new user
     * namespace unless root) where each bind_dst (a real shell) shows bind_src (the shim). */
    int nbinds;
    char **bind_src;
    char **bind_dst;
    int userns;
    int exec_fd; /* >= 0: exec this file (opened before the binds: a real shell) instead of path */
};

static void close_all_but(const int *keep, int nkeep) {
    /* keep[] is sorted ascending; close every gap between kept fds. */
    unsigned int from = 3;
    for (int i = 0; i < nkeep; i++) {
        if (keep[i] < 0 || (unsigned int)keep[i] < from)
            continue;
        if ((unsigned int)keep[i] > from)
            syscall(SYS_close_range, from, (unsigned int)keep[i] - 1, 0);
        from = (unsigned int)keep[i] + 1;
    }
    syscall(SYS_close_range, from, ~0U, 0);
}

static void sort_fds(int *fds, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
            int t = fds[j];
            fds[j] = fds[j - 1];
            fds[j - 1] = t;
        }
}

/* Write all of buf to an existing /proc file; 0 or errno. */
static int write_proc(const char *path, const char *buf, size_t len) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int err = 0;
    if (fd < 0)
        return errno;
    if (write(fd, buf, len) != (ssize_t)len)
        err = errno ? errno : EIO;
    close(fd);
    return err;
}

/* "ID ID 1": the caller's own id, mapped to itself. */
static size_t id_map(char *buf, long id) {
    size_t n = 0;
    put_number(buf, &n, id);
    buf[n++] = ' ';
    put_number(buf, &n, id);
    buf[n++] = ' ';
    buf[n++] = '1';
    buf[n++] = '\n';
    return n;
}

/* A private mount namespace whose mounts no longer propagate out: as root a plain one, otherwise inside a
 * new user namespace that maps the caller's uid and gid to themselves (nothing else is mapped, so no other
 * identity can be taken; files of other owners show as the overflow id but are checked as before).
 * Returns 0 or errno. Raw syscalls only: runs in a child of a threaded process. */
static int enter_namespace(int userns) {
    char map[64];
    uid_t uid = getuid();
    gid_t gid = getgid();
    int err;
    if (unshare(userns ? CLONE_NEWUSER | CLONE_NEWNS : CLONE_NEWNS) != 0)
        return errno;
    if (userns) {
        if ((err = write_proc("/proc/self/uid_map", map, id_map(map, (long)uid))) != 0)
            return err;
        if ((err = write_proc("/proc/self/setgroups", "deny", 4)) != 0 && err != ENOENT)
            return err;
        if ((err = write_proc("/proc/self/gid_map", map, id_map(map, (long)gid))) != 0)
            return err;
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0)
        return errno;
    return 0;
}

/* The command: runs in the keeper's session; every step below happens before any foreign code runs. */
static _Noreturn void exec_command(const struct plan *p) {
    sigset_t none;
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    /* 0. Own process group, in the terminal's foreground when there is one: signals the supervisor
     *    forwards go to this group, never to the keeper. */
    if (setpgid(0, 0) != 0)
        fail(p->errpipe, "setpgid", errno);
    if (p->ctty) {
        sigaction(SIGTTOU, &ignore, NULL);
        if (tcsetpgrp(0, getpid()) != 0)
            fail(p->errpipe, "tcsetpgrp", errno);
    }
    /* 1. Default signal handling and an empty mask: the supervisor's ignored SIGPIPE/SIGXFSZ and a thread's
     *    blocked mask would otherwise survive exec (`yes | head` must die of SIGPIPE, as under bash). */
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* 1b. The agent's routing namespace: the real shells show the shim (Landlock forbids mounts later). */
    if (p->nbinds > 0) {
        int err = enter_namespace(p->userns);
        if (err)
            fail(p->errpipe, "mount_namespace", err);
        for (int i = 0; i < p->nbinds; i++)
            if (mount(p->bind_src[i], p->bind_dst[i], NULL, MS_BIND, NULL) != 0)
                fail(p->errpipe, "bind_shim", errno);
    }

    /* 2. no_new_privs: required by Landlock and seccomp for an unprivileged caller, and stops a setuid
     *    binary from regaining what the sandbox takes away. Never skipped, even as root. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail(p->errpipe, "no_new_privs", errno);

    /* 2b. Root keeps its capabilities across exec unless the bounding set is empty: CAP_SYS_PTRACE would let
     *     it read the supervisor's /proc/PID/environ, CAP_DAC_OVERRIDE other users' files, CAP_SYS_ADMIN
     *     mount over the policy. A sandboxed root is uid 0 with no capabilities. (An unprivileged caller
     *     has none to drop, and no CAP_SETPCAP to drop them with.) */
    if (geteuid() == 0) {
        for (int cap = 0; cap <= 63; cap++)
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
                fail(p->errpipe, "capbset_drop", errno);
    }
    /* 2c. Nor does any caller pass on its inheritable or ambient sets: root's exec makes the inheritable
     *     set permitted and effective whatever the bounding set (a supervisor started with CapInh, as in
     *     containers of older runtimes, gave its commands CAP_DAC_OVERRIDE), and a non-root caller's exec
     *     keeps its ambient set (test_capabilities_of_the_supervisor_do_not_reach_the_command). Lowering
     *     either needs no privilege. EINVAL: a kernel before ambient capabilities (4.3) has none. */
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        fail(p->errpipe, "cap_ambient_clear", errno);
    {
        struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
        if (syscall(SYS_capget, &header, data) != 0)
            fail(p->errpipe, "capget", errno);
        data[0].inheritable = data[1].inheritable = 0;
        if (syscall(SYS_capset, &header, data) != 0)
            fail(p->errpipe, "capset", errno);
    }

    /* 3. Landlock: the static baseline; from here on the filesystem is what the policy grants. */
    if (p->ruleset_fd >= 0) {
        if (syscall(SYS_landlock_restrict_self, p->ruleset_fd, p->landlock_flags) != 0)
            fail(p->errpipe, "landlock_restrict_self", errno);
        close(p->ruleset_fd);
    }

    /* 4. seccomp: the dynamic layer. The listener goes to the supervisor and is closed here: a command
     *    holding its own listener could answer its own notifications (KERNEL-NOTES). */
    if (p->prog.len) {
        long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, p->seccomp_flags, &p->prog);
        if (listener < 0)
            fail(p->errpipe, "seccomp", errno);
        if (p->listener_sock >= 0) {
            /* The supervisor copies the listener out of this process with pidfd_getfd, then acks. Not
             * sendmsg: that is trapped now, and nobody would answer it (the listener is not handed over
             * yet). write and read are not trapped. */
            long where[2] = {(long)getpid(), listener};
            char ack;
            if (write(p->listener_sock, where, sizeof where) != (ssize_t)sizeof where)
                fail(p->errpipe, "send_listener", errno);
            if (read(p->listener_sock, &ack, 1) != 1)
                fail(p->errpipe, "listener_ack", errno ? errno : EPIPE);
            close(p->listener_sock);
        }
        if (listener >= 0)
            close((int)listener);
    }

    /* 5. exec: with a seccomp listener this is the first trapped call, answered by the supervisor. A real
     *    shell under the shim's binds is reached through the fd opened before them. */
    if (p->exec_fd >= 0)
        syscall(SYS_execveat, p->exec_fd, "", p->argv, p->envp, AT_EMPTY_PATH);
    else
        execve(p->path, p->argv, p->envp);
    fail(p->errpipe, "exec", errno);
}

/* What the keeper keeps: the command (its pid is also its process group) and whether it has ended. */
struct tree {
    const struct plan *plan;
    pid_t command;
    int ended;
};

/* Reap every child that has ended, reporting the command's wait status the moment it is reaped (the
 * client returns then, whatever the command left running). The last waitpid result: -1 with ECHILD when
 * the tree is empty. */
static pid_t reap(struct tree *t) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        if (pid == t->command) {
            t->ended = 1;
            report(t->plan->status_pipe, "exit", status);
            close(t->plan->status_pipe);
        }
    return pid;
}

/* SIGKILL the command's process group and every descendant (stopped first so none forks away meanwhile).
 * The group id stays the command's after it ended: a pid is not reused while a group of its number lives. */
static void kill_tree(struct tree *t) {
    static pid_t tree[MAX_TREE];
    for (int round = 0; round < 8; round++) {
        int count = read_children(getpid(), tree, MAX_TREE);
        kill(-t->command, SIGKILL);
        for (int i = 0; i < count && count < MAX_TREE; i++)
            count += read_children(tree[i], tree + count, MAX_TREE - count);
        if (count == 0)
            return;
        for (int i = 0; i < count; i++)
            kill(tree[i], SIGSTOP);
        for (int i = 0; i < count; i++)
            kill(tree[i], SIGKILL);
        reap(t);
    }
}

/* The keeper's loop: reap, report the command's status when it ends, and keep the tree until it is empty.
 * SIGCHLD and KILL_TREE_SIGNAL are blocked (since child() began) and read from a signalfd polled with the
 * supervisor's pidfd, so neither a kill request nor the supervisor's death can slip in between a check
 * and the blocking wait (test_killing_the_client_kills_the_command_tree flaked 1 run in 10 with a handler
 * and waitpid). Once the supervisor is gone the tree is killed again at every wake until it is empty: a
 * process that was forking when one round ran is caught by the next. */
static _Noreturn void keep(const struct plan *p, pid_t command, int signals, int supervisor) {
    struct pollfd watch[2] = {{.fd = signals, .events = POLLIN}, {.fd = supervisor, .events = POLLIN}};
    struct signalfd_siginfo info;
    struct tree t = {.plan = p, .command = command};
    int orphaned = 0;
    for (;;) {
        if (reap(&t) < 0 && errno == ECHILD)
            _exit(t.ended ? 0 : 127); /* the tree is empty */
        if (orphaned)
            kill_tree(&t);
        if (poll(watch, 2, -1) < 0)
            continue; /* EINTR */
        if (watch[1].revents) {
            orphaned = 1;
            watch[1].fd = -1; /* readable for good: stop polling it */
            kill_tree(&t);
        }
        while (read(signals, &info, sizeof info) == (ssize_t)sizeof info)
            if ((int)info.ssi_signo == KILL_TREE_SIGNAL)
                kill_tree(&t);
    }
}

/* The keeper as its own small program (nono-keeper: this file built with NONO_KEEPER, static). The
 * supervisor vforks and the child execs nono-keeper at once, handing it the plan in a memfd and the fds it
 * names: no copy of the supervisor's page tables is made (1.5-1.8 ms of a command's start here), and none
 * lives beside the command, whose every page the supervisor would copy again as it writes it. Without the
 * program (not built) the keeper is a fork of the supervisor, as before. */
#ifndef NONO_KEEPER
static char keeper_path[4096];
#endif

#define PLAN_MAGIC 0x314b504eu /* "NPK1" */

struct out {
    char *data;
    size_t len, cap;
};

static int out_put(struct out *o, const void *data, size_t n) {
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n)
            cap *= 2;
        char *grown = realloc(o->data, cap);
        if (!grown)
            return -1;
        o->data = grown;
        o->cap = cap;
    }
    memcpy(o->data + o->len, data, n);
    o->len += n;
    return 0;
}

static int out_int(struct out *o, int64_t v) { return out_put(o, &v, sizeof v); }

static int out_str(struct out *o, const char *s) {
    size_t n = s ? strlen(s) : 0;
    return out_int(o, s ? (int64_t)n : -1) || (s && out_put(o, s, n + 1));
}

static int out_list(struct out *o, char *const *items) {
    int64_t n = 0;
    while (items && items[n])
        n++;
    if (out_int(o, n))
        return -1;
    for (int64_t i = 0; i < n; i++)
        if (out_str(o, items[i]))
            return -1;
    return 0;
}

/* The plan as bytes (what nono-keeper's read_plan takes back); 0 or -1 (out of memory). */
static int write_plan(struct out *o, const struct plan *p) {
    int64_t ints[] = {PLAN_MAGIC,      p->stdio[0],    p->stdio[1],      p->stdio[2], p->ruleset_fd,
                      p->landlock_flags, p->seccomp_flags, p->listener_sock, p->errpipe, p->status_pipe,
                      p->ctty,         p->userns,      p->exec_fd,       p->supervisor, p->prog.len,
                      p->nbinds};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (out_int(o, ints[i]))
            return -1;
    if (out_put(o, p->prog.filter, (size_t)p->prog.len * sizeof(struct sock_filter)) || out_str(o, p->path) ||
        out_str(o, p->cwd) || out_list(o, p->argv) || out_list(o, p->envp))
        return -1;
    for (int i = 0; i < p->nbinds; i++)
        if (out_str(o, p->bind_src[i]) || out_str(o, p->bind_dst[i]))
            return -1;
    return 0;
}

/* A new fd of the keeper's own, moved above 0-2: those are the command's stdio (or closed, when the client
 * passed none, and then the next fd lands there), and the keeper closes them once the command runs. */
static int above_stdio(int fd) {
    int high;
    if (fd < 0 || fd > 2)
        return fd;
    high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return high;
}

static _Noreturn void child(const struct plan *p) {
    int moved[3];
    int keep_fds[6];
    int supervisor, signals;
    pid_t command;
    struct sigaction ignore = {.sa_handler = SIG_IGN}, dfl = {.sa_handler = SIG_DFL};
    sigset_t waited;

    /* a. A kill request and SIGCHLD (left at its default so that exits queue) are blocked and read from
     *    a signalfd in keep(); the command unblocks all. */
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    sigaddset(&waited, KILL_TREE_SIGNAL);
    sigprocmask(SIG_BLOCK, &waited, NULL);
    sigaction(SIGCHLD, &dfl, NULL);

    /* b. Own session: the agent's terminal signals reach the command only through the supervisor. */
    if (setsid() < 0)
        fail(p->errpipe, "setsid", errno);

    /* c. stdio: the fds nono-shell passed, placed on 0, 1, 2 (moved high first so none clobbers another). */
    for (int i = 0; i < 3; i++) {
        moved[i] = -1;
        if (p->stdio[i] >= 0 && (moved[i] = fcntl(p->stdio[i], F_DUPFD_CLOEXEC, 10)) < 0)
            fail(p->errpipe, "dup", errno);
    }
    for (int i = 0; i < 3; i++) {
        if (moved[i] >= 0) {
            if (dup2(moved[i], i) < 0)
                fail(p->errpipe, "dup2", errno);
        } else {
            close(i);
        }
    }
    if (p->ctty && ioctl(0, TIOCSCTTY, 0) != 0)
        fail(p->errpipe, "controlling_tty", errno);

    /* d. Close every other fd the supervisor had open (sockets of other commands, listeners, the
     *    terminal): nothing of the supervisor leaks into the command. */
    keep_fds[0] = p->ruleset_fd;
    keep_fds[1] = p->listener_sock;
    keep_fds[2] = p->errpipe;
    keep_fds[3] = p->exec_fd;
    keep_fds[4] = p->status_pipe;
    keep_fds[5] = -1;
    sort_fds(keep_fds, 6);
    close_all_but(keep_fds, 6);

    if (p->cwd && chdir(p->cwd) != 0)
        fail(p->errpipe, "chdir", errno);

    /* e. Keeper: subreaper, survives forwarded signals, kills the tree on request or when the supervisor
     *    process is gone. Its pidfd is taken by pid, then the parent checked: if the supervisor died before
     *    the open (and the pid was reused), we were reparented and getppid() differs. Both fds are
     *    close-on-exec: the command never holds them. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        fail(p->errpipe, "subreaper", errno);
    if ((supervisor = above_stdio((int)syscall(SYS_pidfd_open, p->supervisor, 0))) < 0)
        fail(p->errpipe, "pidfd_open", errno);
    if (getppid() != p->supervisor)
        _exit(127);
    if ((signals = above_stdio(signalfd(-1, &waited, SFD_CLOEXEC | SFD_NONBLOCK))) < 0)
        fail(p->errpipe, "signalfd", errno);
    /* vfork: the keeper is a copy of the whole supervisor, and copying its page tables again costs more
     * than the rest of a command's start-up (1.5-1.8 ms here). The command shares the keeper's memory until
     * its execve (the keeper waits meanwhile); exec_command only makes raw syscalls, writes its own stack
     * and leaves by execve or _exit, so nothing of the keeper changes. */
    command = vfork();
    if (command < 0)
        fail(p->errpipe, "fork", errno);
    if (command == 0)
        exec_command(p);
    for (size_t i = 0; i < sizeof forwarded_signals / sizeof forwarded_signals[0]; i++)
        sigaction(forwarded_signals[i], &ignore, NULL);
    report(p->errpipe, "pid", command);
    close(p->errpipe);
    for (int fd = 0; fd < 3; fd++)
        close(fd); /* only the command holds the client's stdio: EOF and SIGPIPE behave as under bash */
    if (p->ruleset_fd >= 0)
        close(p->ruleset_fd);
    if (p->listener_sock >= 0)
        close(p->listener_sock);
    if (p->exec_fd >= 0)
        close(p->exec_fd);
    keep(p, command, signals, supervisor);
}

#ifndef NONO_KEEPER
/* Convert a list of bytes into a NULL-terminated char* array (pointers into the bytes objects). */
static char **byte_list(PyObject *list, const char *what) {
    Py_ssize_t n;
    char **out;
    if (!PyList_Check(list)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
        return NULL;
    }
    n = PyList_GET_SIZE(list);
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!out)
        return (char **)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(item) || (Py_ssize_t)strlen(PyBytes_AS_STRING(item)) != PyBytes_GET_SIZE(item)) {
            PyMem_Free(out);
            PyErr_Format(PyExc_ValueError, "%s items must be bytes without NUL", what);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

/* binds: None or a list of (src, dst) bytes pairs -> two NULL-terminated arrays; 0 or -1 (error set). */
static int bind_lists(PyObject *binds, struct plan *p) {
    Py_ssize_t n;
    if (binds == NULL || binds == Py_None)
        return 0;
    if (!PyList_Check(binds)) {
        PyErr_SetString(PyExc_TypeError, "binds must be a list of (bytes, bytes)");
        return -1;
    }
    n = PyList_GET_SIZE(binds);
    p->bind_src = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    p->bind_dst = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!p->bind_src || !p->bind_dst) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(binds, i), *src, *dst;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(src = PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(dst = PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "binds must be a list of (bytes, bytes)");
            return -1;
        }
        p->bind_src[i] = PyBytes_AS_STRING(src);
        p->bind_dst[i] = PyBytes_AS_STRING(dst);
    }
    p->nbinds = (int)n;
    return 0;
}

PyDoc_STRVAR(spawn_doc,
             "spawn(path, argv, envp, cwd, stdio, ruleset_fd, landlock_flags, bpf, seccomp_flags,\n"
             "      listener_sock, errpipe, status_pipe, ctty[, binds, userns, exec_fd]) -> keeper pid\n\n"
             "Fork a keeper and a sandboxed command (see the module comment). All arguments are prepared\n"
             "by the caller; the child makes only raw syscalls. Read errpipe to EOF to learn whether the\n"
             "exec happened: it carries 'pid:N;' and, if a step failed, 'stage:errno;'. status_pipe gets\n"
             "'exit:STATUS;' (a wait status) when the command ends; EOF alone: the keeper died first.");

/* vfork, and exec nono-keeper with the plan: the keeper pid, or -1 (errno). The child only clears
 * close-on-exec on the fds the plan names and execs (a vfork child shares our memory, not our fd table). */
static pid_t spawn_keeper(const struct plan *p) {
    struct out plan = {0};
    char fdarg[24];
    size_t n = 0;
    pid_t pid;
    int memfd, err;
    if (write_plan(&plan, p) != 0) {
        free(plan.data);
        errno = ENOMEM;
        return -1;
    }
    memfd = (int)syscall(SYS_memfd_create, "nono-plan", 1u /* MFD_CLOEXEC */);
    if (memfd < 0) {
        free(plan.data);
        return -1;
    }
    for (size_t off = 0; off < plan.len;) {
        ssize_t w = write(memfd, plan.data + off, plan.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = errno ? errno : EIO;
            free(plan.data);
            close(memfd);
            errno = err;
            return -1;
        }
        off += (size_t)w;
    }
    free(plan.data);
    lseek(memfd, 0, SEEK_SET);
    put_number(fdarg, &n, memfd);
    fdarg[n] = 0;
    char *argv[] = {"nono-keeper", "plan", fdarg, NULL};
    char *envp[] = {NULL};
    int keep[] = {memfd,           p->stdio[0], p->stdio[1], p->stdio[2], p->ruleset_fd, p->listener_sock,
                  p->errpipe, p->status_pipe, p->exec_fd};
    Py_BEGIN_ALLOW_THREADS
    pid = vfork();
    if (pid == 0) {
        for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
            if (keep[i] >= 0)
                fcntl(keep[i], F_SETFD, 0);
        execve(keeper_path, argv, envp);
        report(p->errpipe, "exec_keeper", errno);
        _exit(127);
    }
    err = errno;
    Py_END_ALLOW_THREADS
    close(memfd);
    errno = err;
    return pid;
}

static PyObject *spawn(PyObject *self, PyObject *args) {
    PyObject *path, *argv_list, *envp_list, *cwd, *stdio, *bpf, *binds = NULL;
    struct plan p;
    char **argv = NULL, **envp = NULL;
    pid_t pid;
    int saved_errno;
    (void)self;

    memset(&p, 0, sizeof p);
    p.exec_fd = -1;
    if (!PyArg_ParseTuple(args, "SOOOOiiSiiiip|Opi", &path, &argv_list, &envp_list, &cwd, &stdio, &p.ruleset_fd,
                          &p.landlock_flags, &bpf, &p.seccomp_flags, &p.listener_sock, &p.errpipe,
                          &p.status_pipe, &p.ctty,
                          &binds, &p.userns, &p.exec_fd))
        return NULL;
    if (!PyArg_ParseTuple(stdio, "iii", &p.stdio[0], &p.stdio[1], &p.stdio[2]))
        return NULL;
    if (PyBytes_GET_SIZE(bpf) % sizeof(struct sock_filter) != 0 ||
        PyBytes_GET_SIZE(bpf) / (Py_ssize_t)sizeof(struct sock_filter) > BPF_MAXINSNS) {
        PyErr_SetString(PyExc_ValueError, "bpf is not a whole BPF program");
        return NULL;
    }
    p.prog.len = (unsigned short)(PyBytes_GET_SIZE(bpf) / sizeof(struct sock_filter));
    p.prog.filter = (struct sock_filter *)PyBytes_AS_STRING(bpf);
    p.path = PyBytes_AS_STRING(path);
    p.cwd = cwd == Py_None ? NULL : PyBytes_AsString(cwd);
    if (cwd != Py_None && !p.cwd)
        return NULL;
    if (!(argv = byte_list(argv_list, "argv")) || !(envp = byte_list(envp_list, "envp")))
        goto out;
    if (bind_lists(binds, &p) != 0)
        goto out;
    p.argv = argv;
    p.envp = envp;
    p.supervisor = getpid();

    if (keeper_path[0]) {
        pid = spawn_keeper(&p);
        saved_errno = errno;
    } else {
        /* Without the GIL: copying the supervisor's page tables takes 1.5-1.8 ms here, and every other
         * thread (the server, other commands' notify loops) would wait for it. Nothing Python is touched:
         * the plan was built above from objects the caller keeps alive; the child never returns to Python. */
        Py_BEGIN_ALLOW_THREADS
        pid = fork();
        if (pid == 0)
            child(&p);
        saved_errno = errno;
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(p.bind_src);
    PyMem_Free(p.bind_dst);
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong((long)pid);
out:
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(p.bind_src);
    PyMem_Free(p.bind_dst);
    return NULL;
}

/* Whether this process may enter the agent's routing namespace: a child tries it and exits. */
static PyObject *probe_namespace(PyObject *self, PyObject *args) {
    int userns, status = 0;
    pid_t pid;
    (void)self;
    if (!PyArg_ParseTuple(args, "p", &userns))
        return NULL;
    pid = fork();
    if (pid == 0)
        _exit(enter_namespace(userns) & 0xff);
    if (pid < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(WIFEXITED(status) ? WEXITSTATUS(status) : EINVAL);
}

static PyObject *set_keeper(PyObject *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    (void)self;
    if (!PyArg_ParseTuple(args, "y#", &path, &n))
        return NULL;
    if ((size_t)n >= sizeof keeper_path || strlen(path) != (size_t)n) {
        PyErr_SetString(PyExc_ValueError, "keeper path too long or with NUL");
        return NULL;
    }
    memcpy(keeper_path, path, (size_t)n + 1); /* set once at import, before any spawn */
    Py_RETURN_NONE;
}

static PyObject *kill_tree_signal(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(KILL_TREE_SIGNAL);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"kill_tree_signal", kill_tree_signal, METH_NOARGS, "The signal that asks a keeper to kill its tree."},
    {"set_keeper", set_keeper, METH_VARARGS, "set_keeper(path): the nono-keeper program keepers become."},
    {"probe_namespace", probe_namespace, METH_VARARGS,
     "probe_namespace(userns) -> 0, or the errno that stops a child entering the routing namespace."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_spawn",
    .m_doc = "Sandboxed fork+exec, raw syscalls only.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__spawn(void) { return PyModule_Create(&module); }
#else
/* nono-keeper plan FD: the keeper, started by spawn_keeper with the plan in FD (see write_plan). */
struct in {
    const char *data;
    size_t len, at;
    int bad;
};

static int64_t in_int(struct in *r) {
    int64_t v = 0;
    if (r->at + sizeof v > r->len) {
        r->bad = 1;
        return 0;
    }
    memcpy(&v, r->data + r->at, sizeof v);
    r->at += sizeof v;
    return v;
}

static const char *in_str(struct in *r) {
    int64_t n = in_int(r);
    const char *s;
    if (n < 0)
        return NULL;
    if (r->bad || (uint64_t)n >= r->len - r->at || r->data[r->at + (size_t)n] != 0) {
        r->bad = 1;
        return NULL;
    }
    s = r->data + r->at;
    r->at += (size_t)n + 1;
    return s;
}

static char **in_list(struct in *r) {
    int64_t n = in_int(r);
    char **items;
    if (r->bad || n < 0 || (uint64_t)n > r->len) {
        r->bad = 1;
        return NULL;
    }
    items = calloc((size_t)n + 1, sizeof(char *));
    if (!items) {
        r->bad = 1;
        return NULL;
    }
    for (int64_t i = 0; i < n && !r->bad; i++)
        items[i] = (char *)in_str(r);
    return items;
}

int main(int argc, char **argv) {
    struct plan p;
    struct stat st;
    struct in r = {0};
    char *buf;
    int fd;
    if (argc != 3 || strcmp(argv[1], "plan") != 0 || (fd = atoi(argv[2])) < 3 || fstat(fd, &st) != 0 ||
        st.st_size <= 0 || !(buf = malloc((size_t)st.st_size)))
        return 127; /* only ever started by spawn_keeper */
    for (size_t got = 0; got < (size_t)st.st_size;) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 127;
        got += (size_t)n;
    }
    close(fd);
    r.data = buf;
    r.len = (size_t)st.st_size;
    memset(&p, 0, sizeof p);
    if (in_int(&r) != PLAN_MAGIC)
        return 127;
    p.stdio[0] = (int)in_int(&r);
    p.stdio[1] = (int)in_int(&r);
    p.stdio[2] = (int)in_int(&r);
    p.ruleset_fd = (int)in_int(&r);
    p.landlock_flags = (int)in_int(&r);
    p.seccomp_flags = (int)in_int(&r);
    p.listener_sock = (int)in_int(&r);
    p.errpipe = (int)in_int(&r);
    p.status_pipe = (int)in_int(&r);
    p.ctty = (int)in_int(&r);
    p.userns = (int)in_int(&r);
    p.exec_fd = (int)in_int(&r);
    p.supervisor = (pid_t)in_int(&r);
    int64_t insns = in_int(&r), nbinds = in_int(&r);
    if (r.bad || insns < 0 || insns > BPF_MAXINSNS || nbinds < 0 || nbinds > 4096 ||
        (size_t)insns * sizeof(struct sock_filter) > r.len - r.at)
        return 127;
    p.prog.len = (unsigned short)insns;
    p.prog.filter = (struct sock_filter *)(buf + r.at); /* read from the file: aligned by malloc + 8 * n */
    r.at += (size_t)insns * sizeof(struct sock_filter);
    p.path = in_str(&r);
    p.cwd = in_str(&r);
    p.argv = in_list(&r);
    p.envp = in_list(&r);
    p.nbinds = (int)nbinds;
    p.bind_src = calloc((size_t)nbinds + 1, sizeof(char *));
    p.bind_dst = calloc((size_t)nbinds + 1, sizeof(char *));
    if (!p.bind_src || !p.bind_dst)
        return 127;
    for (int64_t i = 0; i < nbinds; i++) {
        p.bind_src[i] = (char *)in_str(&r);
        p.bind_dst[i] = (char *)in_str(&r);
    }
    if (r.bad || r.at != r.len || !p.path || !p.argv || !p.envp)
        fail(p.errpipe, "keeper_plan", EINVAL);
    /* Close-on-exec again, as they were in the supervisor: the command must not inherit them. */
    int own[] = {p.ruleset_fd, p.listener_sock, p.errpipe, p.status_pipe, p.exec_fd};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (own[i] >= 0 && fcntl(own[i], F_SETFD, FD_CLOEXEC) != 0)
            fail(p.errpipe, "keeper_cloexec", errno);
    child(&p);
}
#endif

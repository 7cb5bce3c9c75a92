/*
 * _askagain.c: preloaded (LD_PRELOAD) into sandboxed commands whose opens and execve are not trapped.
 *
 * The seccomp filter lets an open/openat (but for O_EXCL, O_TMPFILE, setid creations and unmarked
 * listings), and every execve, through to the kernel (seccomp.py, "Left to Landlock"): Landlock alone
 * decides them, and a denial is EACCES with no notification, so no report, no question, no emulated grant.
 * Where that denial happens in a dynamically linked process, this library sees it and asks again through
 * the always-trapped twin:
 * - an open through openat2: the supervisor's whole pipeline runs on it (read once, resolve, pin, decide,
 *   report or ask, emulate with ADDFD), so the command gets the grant's fd, or EACCES with the report. A
 *   refused open has done nothing (no file made, nothing truncated), so asking again is the same call;
 * - a listing (an O_DIRECTORY open through the wrappers below, and opendir, which opens inside libc) is
 *   made here with LISTING_MARK, which the filter lets through, and made again unmarked where refused;
 * - an exec through execveat: the supervisor reports the denial (an exec is never carried out for a
 *   command: only the baseline can allow it, so a report is all the trap ever added).
 *
 * Only an EACCES is asked again, and only for an open the filter let through (a trapped one's answer is
 * already the supervisor's). Static binaries, raw syscalls, the opens libc makes inside itself (freopen,
 * and the ones it makes with O_EXCL or for scandir, fts and glob, which stay trapped) and the execs it
 * makes inside posix_spawn, system and popen do not pass through here: for them a denial is the kernel's
 * bare EACCES (README, "Left to Landlock").
 *
 * Async-signal-safe on the hot path (a successful open costs one compare): the real functions are resolved
 * once by the constructor, the retry is one raw syscall, errno is kept as the caller expects.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* 437 on every architecture of Linux's unified table (5.1+); execveat has no fallback here: its number
 * differs (322 on x86-64, 281 on arm64) and every header since 3.19 has it. */
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define TMPFILE_BIT 020000000 /* the kernel's __O_TMPFILE: O_TMPFILE is it with O_DIRECTORY */

/* seccomp.LISTING_MARK: a listing (O_DIRECTORY) open with this as its mode is not trapped. The kernel
 * ignores the mode of an open that creates nothing; the filter lets such a listing through to Landlock. */
#define LISTING_MARK 0x6e6f6e6f00000000L

/* seccomp.TRAPPED_OPEN_FLAGS and TRAPPED_OPEN_MASKS, unmarked listings and TRAPPED_CREATE_MODES: what
 * the filter sends to the supervisor (its answer is already the supervisor's: nothing to ask again). Not TRAPPED_TERMINAL_OPEN:
 * the supervisor CONTINUEs it where the path as written is granted, and Landlock may still refuse what it
 * resolves to (a symlink in the workdir to a pty), which only the supervisor's pipeline reports or opens
 * (test_terminals: the symlink route). */
static int trapped(int flags, mode_t mode) {
    return (flags & (O_DIRECTORY | O_EXCL | TMPFILE_BIT)) || ((flags & O_CREAT) && (mode & (S_ISUID | S_ISGID)))
        || (flags & (O_NOFOLLOW | O_ACCMODE)) == (O_NOFOLLOW | O_RDWR);
}

/* An open that takes a mode (glibc's __OPEN_NEEDS_MODE). */
static int creates(int flags) {
    return (flags & O_CREAT) || (flags & TMPFILE_BIT);
}

/* A listing that creates nothing: made here with the mark. */
static int markable(int flags) {
    return (flags & O_DIRECTORY) && !creates(flags) && !(flags & O_EXCL);
}

static mode_t creation_mode(int flags, mode_t mode) {
    return creates(flags) ? mode : 0; /* openat2 refuses a mode it would not use */
}

struct open_how_ {
    uint64_t flags, mode, resolve;
};

typedef int open_fn(const char *, int, ...);
typedef int openat_fn(int, const char *, int, ...);
typedef int open2_fn(const char *, int);
typedef int openat2_fn(int, const char *, int);
typedef FILE *fopen_fn(const char *, const char *);
typedef DIR *opendir_fn(const char *);
typedef int execve_fn(const char *, char *const[], char *const[]);

extern char **environ;

/* The open entry points wrapped below, in the order of their names (the kind says how each is called). */
enum entry { OPEN, OPEN64, OPENAT, OPENAT64, OPEN_2, OPEN64_2, OPENAT_2, OPENAT64_2, ENTRIES };
static const char *const entry_names[ENTRIES] = {
    "open", "open64", "openat", "openat64", "__open_2", "__open64_2", "__openat_2", "__openat64_2",
};
static void *real_entry[ENTRIES];
static fopen_fn *real_fopen, *real_fopen64;
static opendir_fn *real_opendir;
static execve_fn *real_execve, *real_execvpe;

__attribute__((constructor)) static void resolve(void) {
    for (int e = 0; e < ENTRIES; e++)
        real_entry[e] = dlsym(RTLD_NEXT, entry_names[e]);
    real_fopen = (fopen_fn *)dlsym(RTLD_NEXT, "fopen");
    real_fopen64 = (fopen_fn *)dlsym(RTLD_NEXT, "fopen64");
    real_opendir = (opendir_fn *)dlsym(RTLD_NEXT, "opendir");
    real_execve = (execve_fn *)dlsym(RTLD_NEXT, "execve");
    real_execvpe = (execve_fn *)dlsym(RTLD_NEXT, "execvpe");
}

/* The open through the caller's own entry point (the raw syscall before the constructor ran: another
 * library's constructor calling it). The _FORTIFY_SOURCE ones take no mode: they never create. */
static int real_open(enum entry e, int dirfd, const char *path, int flags, mode_t mode) {
    void *fn = real_entry[e];
    if (!fn)
        return (int)syscall(SYS_openat, dirfd, path, flags, mode);
    switch (e) {
    case OPEN:
    case OPEN64: return ((open_fn *)fn)(path, flags, mode);
    case OPENAT:
    case OPENAT64: return ((openat_fn *)fn)(dirfd, path, flags, mode);
    case OPEN_2:
    case OPEN64_2: return ((open2_fn *)fn)(path, flags);
    default: return ((openat2_fn *)fn)(dirfd, path, flags);
    }
}

/* The open's answer, asked again through the supervisor when Landlock alone refused it. */
static int retried(int fd, int dirfd, const char *path, int flags, mode_t mode) {
    if (fd >= 0 || errno != EACCES || trapped(flags, mode) || path == NULL)
        return fd;
    struct open_how_ how = {(uint64_t)(unsigned)flags, creation_mode(flags, mode), 0};
    long again = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (again >= 0)
        return (int)again;
    if (errno == ENOSYS || errno == E2BIG || errno == EINVAL)
        errno = EACCES; /* no supervisor answering openat2: the kernel's answer stands */
    return -1;
}

/* A listing left to Landlock: marked, and made again unmarked (trapped: the supervisor reports, asks or
 * emulates) where refused. -1 with errno, as the open. */
static int marked_listing(int dirfd, const char *path, int flags, enum entry e) {
    long fd = syscall(SYS_openat, dirfd, path, flags, LISTING_MARK);
    if (fd >= 0 || errno != EACCES)
        return (int)fd;
    return real_open(e, dirfd, path, flags, 0);
}

/* Undo traps every open that may write (seccomp.RECORDED_OPENS) but one with O_NONBLOCK that neither
 * creates nor truncates. /dev/null, opened for writing by every `>/dev/null` and by git at each start, is
 * opened here that way (O_CREAT and O_TRUNC do nothing to it), so Landlock alone decides it, and its
 * O_NONBLOCK is cleared at once: the caller's descriptor has the flags it asked for. The null device is
 * checked on the opened descriptor (a /dev/null that is something else is opened as asked: trapped, and
 * recorded if it lies in the command's trees). Saves a wake of the supervisor per redirect (bench_speed's
 * git status: 2 of its 2 notifications). -2: not opened here. */
static int null_device(int dirfd, const char *path, int flags) {
    if (!path || strcmp(path, "/dev/null") != 0 || (flags & (O_EXCL | O_DIRECTORY | TMPFILE_BIT)) ||
        (flags & O_ACCMODE) == O_RDONLY)
        return -2;
    long fd = syscall(SYS_openat, dirfd, path, (flags & ~(O_CREAT | O_TRUNC)) | O_NONBLOCK, 0);
    if (fd < 0)
        return -2; /* as asked, through the trap: its answer and report are the supervisor's */
    struct stat sb;
    if (fstat((int)fd, &sb) != 0 || !S_ISCHR(sb.st_mode) || sb.st_rdev != makedev(1, 3) ||
        (!(flags & O_NONBLOCK) && fcntl((int)fd, F_SETFL, fcntl((int)fd, F_GETFL) & ~O_NONBLOCK) != 0)) {
        close((int)fd);
        return -2;
    }
    return (int)fd;
}

static int opened(enum entry e, int dirfd, const char *path, int flags, mode_t mode) {
    if (markable(flags))
        return marked_listing(dirfd, path, flags, e);
    int saved = errno, fd = null_device(dirfd, path, flags);
    if (fd >= 0)
        return fd;
    errno = saved;
    return retried(real_open(e, dirfd, path, flags, mode), dirfd, path, flags, mode);
}

static mode_t mode_arg(int flags, va_list ap) {
    return creates(flags) ? (mode_t)va_arg(ap, int) : 0;
}

#define MODE_OF(flags, mode)                                                                               \
    va_list ap;                                                                                            \
    va_start(ap, flags);                                                                                   \
    mode_t mode = mode_arg(flags, ap);                                                                     \
    va_end(ap)

int open(const char *path, int flags, ...) {
    MODE_OF(flags, mode);
    return opened(OPEN, AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    MODE_OF(flags, mode);
    return opened(OPEN64, AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    MODE_OF(flags, mode);
    return opened(OPENAT, dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    MODE_OF(flags, mode);
    return opened(OPENAT64, dirfd, path, flags, mode);
}

int __open_2(const char *path, int flags) { return opened(OPEN_2, AT_FDCWD, path, flags, 0); }
int __open64_2(const char *path, int flags) { return opened(OPEN64_2, AT_FDCWD, path, flags, 0); }
int __openat_2(int dirfd, const char *path, int flags) { return opened(OPENAT_2, dirfd, path, flags, 0); }
int __openat64_2(int dirfd, const char *path, int flags) { return opened(OPENAT64_2, dirfd, path, flags, 0); }

/* opendir opens inside libc: its listing is made here, with glibc's flags, and handed to fdopendir (the
 * DIR owns the fd as opendir's does); refused by Landlock, it is libc's own opendir again (trapped). */
DIR *opendir(const char *name) {
    if (!real_opendir)
        resolve();
    long fd = syscall(SYS_openat, AT_FDCWD, name, O_RDONLY | O_NONBLOCK | O_DIRECTORY | O_CLOEXEC, LISTING_MARK);
    if (fd < 0)
        return errno == EACCES ? real_opendir(name) : NULL;
    DIR *dir = fdopendir((int)fd);
    if (!dir) {
        int saved = errno;
        close((int)fd);
        errno = saved;
    }
    return dir;
}

/* fopen's open flags (glibc's reading of its mode: r, w or a, then + x e among the rest up to a ','). */
static int fopen_flags(const char *mode) {
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return -1;
    }
    for (const char *c = mode + 1; *c && *c != ','; c++) {
        if (*c == '+')
            flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*c == 'x')
            flags |= O_EXCL;
        else if (*c == 'e')
            flags |= O_CLOEXEC;
    }
    return flags;
}

/* fopen opens inside libc (not through the symbols above): its refusal is asked again here. */
static FILE *fopen_retried(FILE *fp, const char *path, const char *mode) {
    if (fp || errno != EACCES || path == NULL || mode == NULL)
        return fp;
    int flags = fopen_flags(mode);
    if (flags < 0) {
        errno = EACCES;
        return NULL;
    }
    int fd = retried(-1, AT_FDCWD, path, flags, 0666);
    if (fd < 0)
        return NULL;
    FILE *again = fdopen(fd, mode); /* fdopen truncates nothing: the open did what "w" asks */
    if (!again) {
        int saved = errno;
        close(fd);
        errno = saved;
    }
    return again;
}

FILE *fopen(const char *path, const char *mode) {
    if (!real_fopen)
        resolve();
    return fopen_retried(real_fopen(path, mode), path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
    if (!real_fopen64)
        resolve();
    return fopen_retried(real_fopen64(path, mode), path, mode);
}

/* ---- exec ---------------------------------------------------------------------------------------------
 * execv and execvp call libc's internal execve, which no preload sees: each entry point is wrapped.
 * Async-signal-safe (these run in vfork children): no allocation, the PATH walk joins into a stack buffer. */

/* An execve Landlock refused, asked again through execveat: the supervisor reports it, and the kernel
 * decides again (a file that became executable meanwhile runs, as a second execve would). */
static int exec_retried(const char *path, char *const argv[], char *const envp[]) {
    if (errno != EACCES || path == NULL)
        return -1;
    syscall(SYS_execveat, AT_FDCWD, path, argv, envp, 0);
    if (errno == ENOSYS || errno == EINVAL)
        errno = EACCES; /* no supervisor answering execveat: the kernel's answer stands */
    return -1;
}

int execve(const char *path, char *const argv[], char *const envp[]) {
    if (!real_execve)
        resolve();
    real_execve(path, argv, envp);
    return exec_retried(path, argv, envp);
}

int execv(const char *path, char *const argv[]) { return execve(path, argv, environ); }

/* execvpe's answer, asked again for each candidate of the PATH search that exists, in order (as execvpe
 * tries them: the first one the kernel now allows runs). */
int execvpe(const char *file, char *const argv[], char *const envp[]) {
    if (!real_execvpe)
        resolve();
    real_execvpe(file, argv, envp);
    if (errno != EACCES || *file == '\0')
        return -1;
    if (strchr(file, '/'))
        return exec_retried(file, argv, envp);
    const char *path = getenv("PATH");
    size_t flen = strlen(file);
    for (const char *p = path ? path : "/bin:/usr/bin"; ; p++) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        char candidate[PATH_MAX];
        if (dlen + flen + 2 <= sizeof candidate) {
            size_t at = 0;
            if (dlen) {
                memcpy(candidate, p, dlen);
                candidate[dlen] = '/';
                at = dlen + 1;
            }
            memcpy(candidate + at, file, flen + 1); /* an empty entry is the cwd */
            if (access(candidate, F_OK) == 0) {
                errno = EACCES;
                exec_retried(candidate, argv, envp);
            }
        }
        if (!end)
            break;
        p = end;
    }
    errno = EACCES;
    return -1;
}

int execvp(const char *file, char *const argv[]) { return execvpe(file, argv, environ); }

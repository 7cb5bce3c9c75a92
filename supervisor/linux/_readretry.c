/*
 * _readretry.c: preloaded (LD_PRELOAD) into sandboxed commands whose opens and execve are not trapped.
 *
 * The seccomp filter lets an open/openat (but for O_DIRECTORY, O_EXCL and setid creations), and every
 * execve, through to the kernel (seccomp.py, "Left to Landlock"): Landlock alone decides them, and a denial
 * is EACCES with no notification, so no report, no question, no emulated grant. Where that denial happens
 * in a dynamically linked process, this library sees it and asks again through the always-trapped twin:
 * - an open through openat2: the supervisor's whole pipeline runs on it (read once, resolve, pin, decide,
 *   report or ask, emulate with ADDFD), so the command gets the grant's fd, or EACCES with the report. A
 *   refused open has done nothing (no file made, nothing truncated), so asking again is the same call;
 * - an exec through execveat: the supervisor reports the denial (an exec is never carried out for a
 *   command: only the baseline can allow it, so a report is all the trap ever added).
 *
 * Only an EACCES is asked again, and only for an open the filter let through (a trapped one's answer is
 * already the supervisor's). Static binaries, raw syscalls, the opens libc makes inside itself (freopen,
 * and the ones it makes with O_EXCL, which stay trapped) and the execs it makes inside posix_spawn, system
 * and popen do not pass through here: for them a denial is the kernel's bare EACCES (README, "Left to
 * Landlock").
 *
 * Async-signal-safe on the hot path (a successful open costs one compare): the real functions are resolved
 * once by the constructor, the retry is one raw syscall, errno is kept as the caller expects.
 */
#define _GNU_SOURCE
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
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_execveat
#define SYS_execveat 322
#endif
#ifndef __O_TMPFILE
#define __O_TMPFILE 020000000
#endif

/* seccomp.TRAPPED_OPEN_FLAGS and TRAPPED_CREATE_MODES: the opens the filter sent to the supervisor */
static int trapped(int flags, mode_t mode) {
    return (flags & (O_DIRECTORY | O_EXCL)) || ((flags & O_CREAT) && (mode & (S_ISUID | S_ISGID)));
}

static mode_t creation_mode(int flags, mode_t mode) {
    return (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0; /* openat2 refuses a mode it would not use */
}

struct open_how_ {
    uint64_t flags, mode, resolve;
};

typedef int open_fn(const char *, int, ...);
typedef int openat_fn(int, const char *, int, ...);
typedef int open2_fn(const char *, int);
typedef int openat2_fn(int, const char *, int);
typedef FILE *fopen_fn(const char *, const char *);
typedef int execve_fn(const char *, char *const[], char *const[]);

extern char **environ;

static open_fn *real_open, *real_open64;
static openat_fn *real_openat, *real_openat64;
static open2_fn *real___open_2, *real___open64_2;
static openat2_fn *real___openat_2, *real___openat64_2;
static fopen_fn *real_fopen, *real_fopen64;
static execve_fn *real_execve, *real_execvpe;

__attribute__((constructor)) static void resolve(void) {
    real_open = (open_fn *)dlsym(RTLD_NEXT, "open");
    real_open64 = (open_fn *)dlsym(RTLD_NEXT, "open64");
    real_openat = (openat_fn *)dlsym(RTLD_NEXT, "openat");
    real_openat64 = (openat_fn *)dlsym(RTLD_NEXT, "openat64");
    real___open_2 = (open2_fn *)dlsym(RTLD_NEXT, "__open_2");
    real___open64_2 = (open2_fn *)dlsym(RTLD_NEXT, "__open64_2");
    real___openat_2 = (openat2_fn *)dlsym(RTLD_NEXT, "__openat_2");
    real___openat64_2 = (openat2_fn *)dlsym(RTLD_NEXT, "__openat64_2");
    real_fopen = (fopen_fn *)dlsym(RTLD_NEXT, "fopen");
    real_fopen64 = (fopen_fn *)dlsym(RTLD_NEXT, "fopen64");
    real_execve = (execve_fn *)dlsym(RTLD_NEXT, "execve");
    real_execvpe = (execve_fn *)dlsym(RTLD_NEXT, "execvpe");
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

/* A direct call before the constructor ran (another library's constructor): the raw syscall. */
static int raw_openat(int dirfd, const char *path, int flags, mode_t mode) {
    return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_open ? real_open(path, flags, mode) : raw_openat(AT_FDCWD, path, flags, mode);
    return retried(fd, AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_open64 ? real_open64(path, flags, mode) : raw_openat(AT_FDCWD, path, flags, mode);
    return retried(fd, AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat ? real_openat(dirfd, path, flags, mode) : raw_openat(dirfd, path, flags, mode);
    return retried(fd, dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat64 ? real_openat64(dirfd, path, flags, mode) : raw_openat(dirfd, path, flags, mode);
    return retried(fd, dirfd, path, flags, mode);
}

/* The _FORTIFY_SOURCE entry points (no mode: a fortified caller never creates through them). */
int __open_2(const char *path, int flags) {
    int fd = real___open_2 ? real___open_2(path, flags) : raw_openat(AT_FDCWD, path, flags, 0);
    return retried(fd, AT_FDCWD, path, flags, 0);
}

int __open64_2(const char *path, int flags) {
    int fd = real___open64_2 ? real___open64_2(path, flags) : raw_openat(AT_FDCWD, path, flags, 0);
    return retried(fd, AT_FDCWD, path, flags, 0);
}

int __openat_2(int dirfd, const char *path, int flags) {
    int fd = real___openat_2 ? real___openat_2(dirfd, path, flags) : raw_openat(dirfd, path, flags, 0);
    return retried(fd, dirfd, path, flags, 0);
}

int __openat64_2(int dirfd, const char *path, int flags) {
    int fd = real___openat64_2 ? real___openat64_2(dirfd, path, flags) : raw_openat(dirfd, path, flags, 0);
    return retried(fd, dirfd, path, flags, 0);
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
    if (errno != EACCES || file == NULL || *file == '\0')
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

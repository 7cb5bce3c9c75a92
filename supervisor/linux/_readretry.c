/*
 * _readretry.c: preloaded (LD_PRELOAD) into sandboxed commands whose plain reads and execve are not trapped.
 *
 * The seccomp filter lets an open/openat with plain read flags, and every execve, through to the kernel
 * (seccomp.py, LEFT_TO_LANDLOCK): Landlock alone decides them, and a denial is EACCES with no notification,
 * so no report, no question, no emulated grant. Where that denial happens in a dynamically linked process,
 * this library sees it and asks again through the always-trapped twin of the call:
 * - a read through openat2: the supervisor's whole pipeline runs on it (read once, resolve, pin, decide,
 *   report or ask, emulate with ADDFD), so the command gets the grant's fd, or EACCES with the report;
 * - an exec through execveat: the supervisor reports the denial (an exec is never carried out for a
 *   command: only the baseline can allow it, so a report is all the trap ever added).
 *
 * Only an EACCES is asked again (any other open flags were trapped in the first place: their answer is
 * already the supervisor's). Static binaries, raw syscalls, and the execs libc makes inside posix_spawn,
 * system and popen do not pass through here: for them a denial is the kernel's bare EACCES (README,
 * "Left to Landlock").
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

/* seccomp.PLAIN_READ_EXCLUDES: with none of these, the filter did not trap the open */
#define NOT_PLAIN (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_DIRECTORY | __O_TMPFILE)

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

/* The open's answer, asked again through the supervisor when Landlock alone refused a plain read. */
static int retried(int fd, int dirfd, const char *path, int flags) {
    if (fd >= 0 || errno != EACCES || (flags & NOT_PLAIN) || path == NULL)
        return fd;
    struct open_how_ how = {(uint64_t)(unsigned)flags, 0, 0};
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
    return retried(fd, AT_FDCWD, path, flags);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_open64 ? real_open64(path, flags, mode) : raw_openat(AT_FDCWD, path, flags, mode);
    return retried(fd, AT_FDCWD, path, flags);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat ? real_openat(dirfd, path, flags, mode) : raw_openat(dirfd, path, flags, mode);
    return retried(fd, dirfd, path, flags);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat64 ? real_openat64(dirfd, path, flags, mode) : raw_openat(dirfd, path, flags, mode);
    return retried(fd, dirfd, path, flags);
}

/* The _FORTIFY_SOURCE entry points (no mode: a fortified caller never creates through them). */
int __open_2(const char *path, int flags) {
    int fd = real___open_2 ? real___open_2(path, flags) : raw_openat(AT_FDCWD, path, flags, 0);
    return retried(fd, AT_FDCWD, path, flags);
}

int __open64_2(const char *path, int flags) {
    int fd = real___open64_2 ? real___open64_2(path, flags) : raw_openat(AT_FDCWD, path, flags, 0);
    return retried(fd, AT_FDCWD, path, flags);
}

int __openat_2(int dirfd, const char *path, int flags) {
    int fd = real___openat_2 ? real___openat_2(dirfd, path, flags) : raw_openat(dirfd, path, flags, 0);
    return retried(fd, dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags) {
    int fd = real___openat64_2 ? real___openat64_2(dirfd, path, flags) : raw_openat(dirfd, path, flags, 0);
    return retried(fd, dirfd, path, flags);
}

/* fopen opens inside libc (not through the symbols above): a read-only mode is retried here. */
static FILE *fopen_retried(FILE *fp, const char *path, const char *mode) {
    if (fp || errno != EACCES || path == NULL || mode == NULL || mode[0] != 'r' || strchr(mode, '+'))
        return fp;
    int flags = O_RDONLY | (strchr(mode, 'e') ? O_CLOEXEC : 0);
    int fd = retried(-1, AT_FDCWD, path, flags);
    if (fd < 0)
        return NULL;
    FILE *again = fdopen(fd, mode);
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

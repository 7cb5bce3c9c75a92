/*
 * interpose.c: route the shell spawns of a preloaded agent to nono-shell (DESIGN.md routing layer 3).
 *
 * The supervisor starts the agent with this library in LD_PRELOAD (DYLD_INSERT_LIBRARIES on macOS) and:
 *   NONO_SHIM_DIR  absolute dir of shims named bash, sh, dash, zsh (links to nono-shell); unset = do nothing
 *   NONO_SHELLS    colon-separated basenames to route; unset = "sh:bash:dash:zsh", empty = none
 *   NONO_SOCKET    the supervisor's socket, for the shim
 *
 * A spawn whose program is a shell named in NONO_SHELLS (by the basename of its path after any PATH lookup,
 * or of the "#!" interpreter of a script, "#!/usr/bin/env bash" included) runs $NONO_SHIM_DIR/<basename>
 * instead:
 *   execve("/bin/bash", {"bash", "-c", "ls"})   ->  execve("$SHIM/bash", {"bash", "-c", "ls"})  argv kept
 *   execve("./x.sh", {"./x.sh", "a"}), #!/bin/sh ->  execve("$SHIM/sh", {"$SHIM/sh", "./x.sh", "a"})
 * The script form is what the kernel would have run, with the shim as the interpreter. Everything else
 * runs untouched, except that every child keeps LD_PRELOAD and NONO_* in its environment (a caller's
 * scrubbed envp included), so grandchildren are routed too.
 *
 * Never recurses: the real functions come from dlsym(RTLD_NEXT) (dyld interposition on macOS), a path in
 * NONO_SHIM_DIR is never rewritten, and a process that was itself exec'd from NONO_SHIM_DIR (the shim) stays
 * passive, so a shim that falls back to the real shell cannot loop through itself.
 *
 * vfork rules (STYLE.md 13): the exec wrappers may run in a vfork child sharing the parent's memory
 * (CPython's _posixsubprocess, libuv), so they call only async-signal-safe functions: no malloc, no stdio,
 * no locks; buffers are bounded and on the stack; errno is saved and restored around the probing; the
 * configuration is written once, by the constructor, and only read after it. The one exception is state
 * POSIX itself requires of system() (the SIGINT/SIGQUIT count) and popen()/pclose() (the child list):
 * glibc keeps the same two, each under its own mutex, and neither function may be called in a vfork child.
 * Stack: nono_launch() takes about 33 KiB (NONO_MAX_ARGV + NONO_MAX_ENV pointers, two PATH_MAX buffers);
 * the deepest chain, execlp of a script without "#!" (execvp's /bin/sh fallback), about 70 KiB.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h> /* FILE, for popen()/pclose() only */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef __APPLE__
#include <crt_externs.h>
#define NONO_ENVIRON (*_NSGetEnviron()) /* a dylib cannot link `environ` directly */
#define NONO_PRELOAD_VAR "DYLD_INSERT_LIBRARIES"
/* dyld binds calls made from other images to the replacement; our own calls reach the real function. */
#define DYLD_INTERPOSE(_replacement, _replacee)                                                               \
    __attribute__((used)) static struct {                                                                     \
        const void *replacement;                                                                              \
        const void *replacee;                                                                                 \
    } _interpose_##_replacee __attribute__((section("__DATA,__interpose"))) = {                               \
        (const void *)(unsigned long)&_replacement, (const void *)(unsigned long)&_replacee};
#define HOOK(name) nono_hook_##name
#define REAL(name) name
#else
#include <sys/auxv.h>
extern char **environ;
#define NONO_ENVIRON environ
#define NONO_PRELOAD_VAR "LD_PRELOAD"
/* Exported under the libc names: the dynamic linker binds the agent's calls here first. */
#define HOOK(name) name
/* Resolved once by the constructor; a call before it ran (another preloaded library's constructor) looks
   the symbol up on the spot and does not store it, so nothing is written after the constructor. */
#define REAL(name) (g.real_##name ? g.real_##name : (name##_fn *)dlsym(RTLD_NEXT, #name))
#endif

/* Shells NONO_SHELLS may name. The supervisor names four; 16 leaves room without a parser that allocates. */
#define NONO_MAX_SHELLS 16
/* Bytes of NONO_SHELLS kept; longer lists are cut at a name boundary. */
#define NONO_SHELLS_MAX 256
/* Head of a script read for "#!": the kernel's BINPRM_BUF_SIZE (256 since Linux 5.1) reads no more. */
#define NONO_SHEBANG_MAX 256
/* Pointers copied onto the stack when argv must be rebuilt (execl*, a #! script, execvp's /bin/sh
   fallback). The copy lives on the caller's stack, which in a vfork child is a thread stack that may be
   small: 2048 pointers are 16 KiB. Beyond it the call fails with E2BIG rather than run a shell unrouted;
   xargs and find -exec {} + answer E2BIG by retrying with fewer arguments. */
#define NONO_MAX_ARGV 2048
/* Environment entries copied when LD_PRELOAD/NONO_* must be put back: 1024 pointers are 8 KiB. A routed
   spawn with a larger env that lacks them fails with E2BIG (the shim needs NONO_SOCKET); any other spawn
   keeps the caller's env as given. */
#define NONO_MAX_ENV 1024
/* What we keep in every child's environment, in this order. */
enum { NONO_KEEP_PRELOAD, NONO_KEEP_SOCKET, NONO_KEEP_SHIM_DIR, NONO_KEEP_SHELLS, NONO_KEEP_COUNT };

typedef int execve_fn(const char *, char *const[], char *const[]);
typedef int execv_fn(const char *, char *const[]);
typedef int execvp_fn(const char *, char *const[]);
typedef int execvpe_fn(const char *, char *const[], char *const[]);
typedef int fexecve_fn(int, char *const[], char *const[]);
typedef int posix_spawn_fn(pid_t *, const char *, const posix_spawn_file_actions_t *,
                           const posix_spawnattr_t *, char *const[], char *const[]);
typedef int posix_spawnp_fn(pid_t *, const char *, const posix_spawn_file_actions_t *,
                            const posix_spawnattr_t *, char *const[], char *const[]);
typedef int system_fn(const char *);
typedef FILE *popen_fn(const char *, const char *);
typedef int pclose_fn(FILE *);

/* Written only by nono_init(), before main() and before any thread of the agent exists. */
static struct {
    int enabled;
    char shim_dir[PATH_MAX]; /* no trailing slash */
    size_t shim_dir_len;
    char shells_buf[NONO_SHELLS_MAX];
    const char *shells[NONO_MAX_SHELLS];
    size_t n_shells;
    char self[PATH_MAX]; /* this library as the loader named it, to spot it in a child's LD_PRELOAD */
    struct {
        const char *key; /* "NAME=" */
        size_t key_len;
        int set; /* was set at load: entry holds "NAME=value" */
        char entry[PATH_MAX];
    } keep[NONO_KEEP_COUNT];
#ifndef __APPLE__
    execve_fn *real_execve;
    execv_fn *real_execv;
    execvp_fn *real_execvp;
    execvpe_fn *real_execvpe;
    fexecve_fn *real_fexecve;
    posix_spawn_fn *real_posix_spawn;
    posix_spawnp_fn *real_posix_spawnp;
    system_fn *real_system;
    popen_fn *real_popen;
    pclose_fn *real_pclose;
#endif
} g;

/* ------------------------------------------------------------------------------------------------------ */
/* Small async-signal-safe helpers (no libc call here may allocate or lock).                              */

static size_t nono_veclen(char *const v[])
{
    size_t n = 0;

    while (v != NULL && v[n] != NULL)
        n++;
    return n;
}

static const char *nono_basename(const char *path)
{
    const char *slash = strrchr(path, '/');

    return slash != NULL ? slash + 1 : path;
}

/* Copies a and b into dst (size cap) as "a" "sep" "b"; 0 if it does not fit. sep may be 0 (none). */
static int nono_join(char *dst, size_t cap, const char *a, char sep, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), n = la + (sep != 0) + lb;

    if (n + 1 > cap)
        return 0;
    memcpy(dst, a, la);
    if (sep != 0)
        dst[la] = sep;
    memcpy(dst + la + (sep != 0), b, lb + 1);
    return 1;
}

static int nono_in_shim_dir(const char *path)
{
    return strncmp(path, g.shim_dir, g.shim_dir_len) == 0 && path[g.shim_dir_len] == '/';
}

static int nono_is_shell(const char *name)
{
    for (size_t i = 0; i < g.n_shells; i++)
        if (strcmp(name, g.shells[i]) == 0)
            return 1;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* The decision: does this program run a routed shell, and how.                                           */

enum nono_kind { NONO_PASS, NONO_SHELL, NONO_SCRIPT };

struct nono_route {
    enum nono_kind kind;
    char shim[PATH_MAX];          /* $NONO_SHIM_DIR/<shell> */
    char arg[NONO_SHEBANG_MAX];   /* NONO_SCRIPT: the optional "#!" argument, as the kernel passes it */
    int has_arg;
};

static int nono_set_shim(struct nono_route *r, enum nono_kind kind, const char *shell)
{
    if (!nono_join(r->shim, sizeof(r->shim), g.shim_dir, '/', shell))
        return 0;
    r->kind = kind;
    return 1;
}

/*
 * Parses a script head the way fs/binfmt_script.c does: "#!", blanks, the interpreter up to a blank, then
 * everything up to the end of the line, trailing blanks trimmed, as one optional argument. Routes when the
 * interpreter is a shell, or is env naming a shell ("#!/usr/bin/env bash"; env's flags are not parsed:
 * that env runs with this library and routes its own exec).
 */
static int nono_parse_shebang(char *buf, size_t n, struct nono_route *r)
{
    char *p, *end, *interp, *arg;
    const char *shell;

    if (n < 3 || buf[0] != '#' || buf[1] != '!')
        return 0;
    buf[n] = '\0';
    end = memchr(buf, '\n', n);
    if (end == NULL)
        end = buf + n;
    while (end > buf + 2 && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *end = '\0';
    for (p = buf + 2; *p == ' ' || *p == '\t'; p++)
        ;
    interp = p;
    while (*p != '\0' && *p != ' ' && *p != '\t')
        p++;
    if (p == interp)
        return 0;
    if (*p != '\0')
        *p++ = '\0';
    else if (end == buf + n && n == NONO_SHEBANG_MAX - 1)
        return 0; /* the interpreter's name runs past what we read: not ours to guess */
    while (*p == ' ' || *p == '\t')
        p++;
    arg = p;

    if (nono_in_shim_dir(interp))
        return 0; /* "#!$NONO_SHIM_DIR/bash": the kernel already runs the shim */
    shell = nono_basename(interp);
    if (strcmp(shell, "env") == 0 && *arg != '\0' && *arg != '-' && strpbrk(arg, " \t=") == NULL) {
        shell = nono_basename(arg);
        if (!nono_is_shell(shell))
            return 0;
        r->has_arg = 0; /* env consumed it: "env bash x.sh a" runs "bash x.sh a" */
        return nono_set_shim(r, NONO_SCRIPT, shell);
    }
    if (!nono_is_shell(shell) || access(interp, X_OK) != 0)
        return 0;
    r->has_arg = *arg != '\0';
    if (r->has_arg && !nono_join(r->arg, sizeof(r->arg), arg, 0, ""))
        return 0;
    return nono_set_shim(r, NONO_SCRIPT, shell);
}

/*
 * Fills r and returns 1 when path (or fd, for fexecve) must run a shim. Two syscalls for a shell name
 * (access), four for anything else (open, fstat, pread, close): the same file the kernel would open.
 */
static int nono_classify(const char *path, int fd, struct nono_route *r)
{
    char head[NONO_SHEBANG_MAX];
    struct stat st;
    ssize_t n;
    int own_fd = -1, routed = 0;

    r->kind = NONO_PASS;
    if (!g.enabled || path == NULL || *path == '\0' || nono_in_shim_dir(path))
        return 0;
    if (nono_is_shell(nono_basename(path))) {
        /* A missing /bin/zsh keeps its ENOENT instead of becoming a shim's run. */
        if (fd < 0 && access(path, X_OK) != 0)
            return 0;
        return nono_set_shim(r, NONO_SHELL, nono_basename(path));
    }
    if (fd < 0) {
        /* O_NONBLOCK: a FIFO named by a failing exec must not hang us before the kernel says EACCES. */
        own_fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (own_fd < 0)
            goto out; /* execute-only binaries cannot be scripts the kernel reads either */
        fd = own_fd;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto out;
    n = pread(fd, head, sizeof(head) - 1, 0);
    if (n <= 0 || !nono_parse_shebang(head, (size_t)n, r))
        goto out;
    /* The kernel needs the script itself to be executable; if it is not, keep its EACCES. */
    routed = own_fd < 0 || access(path, X_OK) == 0;
out:
    if (own_fd >= 0)
        close(own_fd);
    if (!routed)
        r->kind = NONO_PASS;
    return routed;
}

/* ------------------------------------------------------------------------------------------------------ */
/* The environment a child gets: the caller's, with LD_PRELOAD and NONO_* as captured at load.           */

static int nono_keep_index(const char *entry)
{
    for (int k = 0; k < NONO_KEEP_COUNT; k++)
        if (strncmp(entry, g.keep[k].key, g.keep[k].key_len) == 0)
            return k;
    return -1;
}

/* Does an LD_PRELOAD value (':' or ' ' separated, as ld.so reads it) list this library? */
static int nono_preload_has_self(const char *value)
{
    size_t len = strlen(g.self);

    if (len == 0)
        return 1; /* we do not know our own name: leave the caller's LD_PRELOAD alone */
    for (const char *p = value; *p != '\0';) {
        size_t tok = strcspn(p, ": ");
        if (tok == len && strncmp(p, g.self, len) == 0)
            return 1;
        p += tok;
        if (*p != '\0')
            p++;
    }
    return 0;
}

/* The entry to put in place of a caller's (k, entry): entry itself when it is already right; ld is
   scratch for a merged LD_PRELOAD. */
static const char *nono_kept_entry(int k, const char *entry, char *ld, size_t ldcap)
{
    const char *theirs = entry + g.keep[k].key_len;

    if (k != NONO_KEEP_PRELOAD)
        return strcmp(entry, g.keep[k].entry) == 0 ? entry : g.keep[k].entry;
    if (nono_preload_has_self(theirs))
        return entry;
    /* The caller preloads something of its own: keep it, after us. */
    if (*theirs != '\0' && nono_join(ld, ldcap, g.keep[k].key, 0, g.self) &&
        nono_join(ld + strlen(ld), ldcap - strlen(ld), ":", 0, theirs))
        return ld;
    return g.keep[k].entry;
}

/*
 * Sets *env to envp when it already carries what we keep (no copy: the common case), else to a copy in
 * out (room for cap pointers) with the kept entries replaced or appended. Returns 0 when that copy does
 * not fit.
 */
static int nono_keep_env(char *const envp[], const char **out, size_t cap, char *ld, size_t ldcap,
                         char *const **env)
{
    int seen[NONO_KEEP_COUNT] = {0}, stale = 0;
    size_t n = 0, m = 0;

    *env = envp;
    for (; envp != NULL && envp[n] != NULL; n++) {
        int k = nono_keep_index(envp[n]);
        if (k < 0 || !g.keep[k].set)
            continue;
        seen[k] = 1;
        if (nono_kept_entry(k, envp[n], ld, ldcap) != envp[n])
            stale = 1;
    }
    for (int k = 0; k < NONO_KEEP_COUNT; k++)
        if (g.keep[k].set && !seen[k])
            stale = 1;
    if (!stale)
        return 1;
    if (n + NONO_KEEP_COUNT + 1 > cap)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int k = nono_keep_index(envp[i]);
        out[m++] = (k < 0 || !g.keep[k].set) ? envp[i] : nono_kept_entry(k, envp[i], ld, ldcap);
    }
    for (int k = 0; k < NONO_KEEP_COUNT; k++)
        if (g.keep[k].set && !seen[k])
            out[m++] = g.keep[k].entry;
    out[m] = NULL;
    *env = (char *const *)out;
    return 1;
}

/* ------------------------------------------------------------------------------------------------------ */
/* One launcher for every hook: classify, rebuild argv/envp on the stack, call the real function.         */

enum nono_op { NONO_OP_EXECVE, NONO_OP_FEXECVE, NONO_OP_SPAWN, NONO_OP_SPAWNP };

struct nono_call {
    enum nono_op op;
    const char *path; /* what runs (classified); NULL: posix_spawnp found nothing to classify */
    int fd;           /* NONO_OP_FEXECVE */
    const char *file; /* NONO_OP_SPAWNP: the caller's name, searched again by the real posix_spawnp */
    pid_t *pid;
    const posix_spawn_file_actions_t *actions;
    const posix_spawnattr_t *attr;
};

/* Exec ops return -1 with errno set (only on failure); spawn ops return an error number. */
static int nono_fail(const struct nono_call *c, int err)
{
    if (c->op == NONO_OP_SPAWN || c->op == NONO_OP_SPAWNP)
        return err;
    errno = err;
    return -1;
}

static int nono_launch(const struct nono_call *c, char *const argv[], char *const envp[])
{
    const char *av[NONO_MAX_ARGV];
    const char *ev[NONO_MAX_ENV];
    char ld[PATH_MAX];
    struct nono_route r;
    char *const *args = argv, *const *env = envp;
    int saved_errno = errno;
    size_t argc, m = 0;

    nono_classify(c->path, c->op == NONO_OP_FEXECVE ? c->fd : -1, &r);
    if (g.enabled && !nono_keep_env(envp, ev, NONO_MAX_ENV, ld, sizeof(ld), &env)) {
        if (r.kind != NONO_PASS)
            return nono_fail(c, E2BIG); /* the shim would run without NONO_SOCKET */
        env = envp;                     /* grandchildren lose routing; this child is unchanged */
    }
    if (r.kind == NONO_SCRIPT) {
        /* What the kernel runs for "#!interp arg": interp [arg] script argv[1..], with the shim as interp. */
        argc = nono_veclen(argv);
        if (argc + 4 > NONO_MAX_ARGV)
            return nono_fail(c, E2BIG);
        av[m++] = r.shim;
        if (r.has_arg)
            av[m++] = r.arg;
        av[m++] = c->path;
        for (size_t i = 1; i < argc; i++)
            av[m++] = argv[i];
        av[m] = NULL;
        args = (char *const *)av;
    }
    errno = saved_errno;

    if (r.kind != NONO_PASS) {
        if (c->op == NONO_OP_SPAWN || c->op == NONO_OP_SPAWNP)
            return REAL(posix_spawn)(c->pid, r.shim, c->actions, c->attr, args, env);
        return REAL(execve)(r.shim, args, env);
    }
    switch (c->op) {
    case NONO_OP_SPAWN:
        return REAL(posix_spawn)(c->pid, c->path, c->actions, c->attr, argv, env);
    case NONO_OP_SPAWNP:
        return REAL(posix_spawnp)(c->pid, c->file, c->actions, c->attr, argv, env);
#ifndef __APPLE__
    case NONO_OP_FEXECVE:
        return REAL(fexecve)(c->fd, argv, env);
#endif
    default:
        return REAL(execve)(c->path, argv, env);
    }
}

static int nono_execve(const char *path, char *const argv[], char *const envp[])
{
    struct nono_call c = {.op = NONO_OP_EXECVE, .path = path, .fd = -1};

    return nono_launch(&c, argv, envp);
}

/* glibc's execvp runs a file the kernel refuses (ENOEXEC: no "#!") with /bin/sh, inside libc where no hook
   sees it; we do the same through the launcher, so that shell is routed too. */
/* noinline: its argv copy is on the stack only on this rare path, not in every execvp's frame. */
__attribute__((noinline)) static int nono_exec_sh_fallback(const char *path, char *const argv[],
                                                         char *const envp[])
{
    const char *av[NONO_MAX_ARGV];
    size_t argc = nono_veclen(argv), m = 0;

    if (argc + 3 > NONO_MAX_ARGV) {
        errno = E2BIG;
        return -1;
    }
    av[m++] = "/bin/sh";
    av[m++] = path;
    for (size_t i = 1; i < argc; i++)
        av[m++] = argv[i];
    av[m] = NULL;
    return nono_execve("/bin/sh", (char *const *)av, envp);
}

/* Next element of a PATH string as "dir/file" in buf (an empty element is the cwd); returns the rest of the
   PATH string, or NULL after the last element. *ok is 0 when the joined name does not fit. */
static const char *nono_path_next(const char *p, const char *file, char *buf, size_t cap, int *ok)
{
    size_t dlen = strcspn(p, ":"), flen = strlen(file), at = dlen;
    const char *rest = p[dlen] == ':' ? p + dlen + 1 : NULL;

    *ok = dlen + 1 + flen + 1 <= cap;
    if (*ok) {
        memcpy(buf, p, dlen);
        if (dlen > 0)
            buf[at++] = '/';
        memcpy(buf + at, file, flen + 1);
    }
    return rest;
}

/* The default search path when PATH is unset, as glibc's confstr(_CS_PATH). */
static const char *nono_search_path(void)
{
    const char *p = getenv("PATH");

    return p != NULL ? p : "/bin:/usr/bin";
}

/* execvpe as glibc does it (ENOENT/ENOTDIR/EACCES go on to the next dir; EACCES is remembered), with each
   candidate going through the launcher. */
static int nono_execvpe(const char *file, char *const argv[], char *const envp[])
{
    char cand[PATH_MAX];
    const char *p;
    int got_eacces = 0, ok;

    if (file == NULL || *file == '\0') {
        errno = ENOENT;
        return -1;
    }
    if (strchr(file, '/') != NULL) {
        nono_execve(file, argv, envp);
        if (errno == ENOEXEC)
            nono_exec_sh_fallback(file, argv, envp);
        return -1;
    }
    for (p = nono_search_path(); p != NULL;) {
        p = nono_path_next(p, file, cand, sizeof(cand), &ok);
        if (!ok)
            continue;
        nono_execve(cand, argv, envp);
        switch (errno) {
        case ENOEXEC:
            nono_exec_sh_fallback(cand, argv, envp);
            return -1;
        case EACCES:
            got_eacces = 1;
            /* fall through */
        case ENOENT:
        case ENOTDIR:
        case ESTALE:
        case ENODEV:
        case ETIMEDOUT:
            continue;
        default:
            return -1;
        }
    }
    errno = got_eacces ? EACCES : ENOENT;
    return -1;
}

/* For posix_spawnp: the first regular executable file PATH names, which is what glibc will run. */
static const char *nono_lookup(const char *file, char *buf, size_t cap)
{
    struct stat st;
    int ok;

    if (strchr(file, '/') != NULL)
        return file;
    for (const char *p = nono_search_path(); p != NULL;) {
        p = nono_path_next(p, file, buf, cap, &ok);
        if (ok && stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0)
            return buf;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------ */
/* The exec family.                                                                                       */

int HOOK(execve)(const char *path, char *const argv[], char *const envp[])
{
    return nono_execve(path, argv, envp);
}

static int nono_execv(const char *path, char *const argv[])
{
    if (!g.enabled)
        return REAL(execv)(path, argv);
    return nono_execve(path, argv, NONO_ENVIRON);
}

static int nono_execvp(const char *file, char *const argv[])
{
    if (!g.enabled)
        return REAL(execvp)(file, argv);
    return nono_execvpe(file, argv, NONO_ENVIRON);
}

int HOOK(execv)(const char *path, char *const argv[])
{
    return nono_execv(path, argv);
}

int HOOK(execvp)(const char *file, char *const argv[])
{
    return nono_execvp(file, argv);
}

#ifndef __APPLE__
int HOOK(execvpe)(const char *file, char *const argv[], char *const envp[])
{
    if (!g.enabled)
        return REAL(execvpe)(file, argv, envp);
    return nono_execvpe(file, argv, envp);
}

/* "/proc/self/fd/<fd>" without snprintf, which is not async-signal-safe. */
static void nono_fd_link(int fd, char buf[32])
{
    char digits[12];
    size_t n = 0;
    unsigned int v = (unsigned int)fd;

    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0 && n < sizeof(digits));
    memcpy(buf, "/proc/self/fd/", 14);
    for (size_t i = 0; i < n; i++)
        buf[14 + i] = digits[n - 1 - i];
    buf[14 + n] = '\0';
}

int HOOK(fexecve)(int fd, char *const argv[], char *const envp[])
{
    char link[32], path[PATH_MAX];
    ssize_t n;
    int saved_errno = errno;
    struct nono_call c = {.op = NONO_OP_FEXECVE, .fd = fd};

    if (g.enabled && fd >= 0) {
        /* Which file the fd names; "... (deleted)" or a memfd simply classifies as not a shell. */
        nono_fd_link(fd, link);
        n = readlink(link, path, sizeof(path) - 1);
        if (n > 0) {
            path[n] = '\0';
            c.path = path;
        }
        errno = saved_errno;
    }
    return nono_launch(&c, argv, envp);
}
#endif

/* execl, execlp, execle: argv gathered on the stack (glibc uses a VLA here); returns argc, or -1 with
   errno E2BIG past NONO_MAX_ARGV. */
static int nono_gather(const char *arg0, va_list *ap, const char **av)
{
    int argc = 0;

    for (const char *a = arg0; a != NULL; a = va_arg(*ap, const char *)) {
        if (argc + 1 >= NONO_MAX_ARGV) {
            errno = E2BIG;
            return -1;
        }
        av[argc++] = a;
    }
    av[argc] = NULL;
    return argc;
}

int HOOK(execl)(const char *path, const char *arg, ...)
{
    const char *av[NONO_MAX_ARGV];
    va_list ap;
    int argc;

    va_start(ap, arg);
    argc = nono_gather(arg, &ap, av);
    va_end(ap);
    if (argc < 0)
        return -1;
    return nono_execv(path, (char *const *)av);
}

int HOOK(execlp)(const char *file, const char *arg, ...)
{
    const char *av[NONO_MAX_ARGV];
    va_list ap;
    int argc;

    va_start(ap, arg);
    argc = nono_gather(arg, &ap, av);
    va_end(ap);
    if (argc < 0)
        return -1;
    return nono_execvp(file, (char *const *)av);
}

int HOOK(execle)(const char *path, const char *arg, ...)
{
    const char *av[NONO_MAX_ARGV];
    char *const *envp = NULL;
    va_list ap;
    int argc;

    va_start(ap, arg);
    argc = nono_gather(arg, &ap, av);
    if (argc >= 0)
        envp = va_arg(ap, char *const *); /* after the NULL that ends the arguments */
    va_end(ap);
    if (argc < 0)
        return -1;
    return nono_execve(path, (char *const *)av, envp);
}

/* ------------------------------------------------------------------------------------------------------ */
/* posix_spawn, posix_spawnp.                                                                             */

int HOOK(posix_spawn)(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                      const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    struct nono_call c = {
        .op = NONO_OP_SPAWN, .path = path, .fd = -1, .pid = pid, .actions = actions, .attr = attr};

    return nono_launch(&c, argv, envp);
}

int HOOK(posix_spawnp)(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    char buf[PATH_MAX];
    int saved_errno = errno;
    struct nono_call c = {
        .op = NONO_OP_SPAWNP, .fd = -1, .file = file, .pid = pid, .actions = actions, .attr = attr};

    if (!g.enabled)
        return REAL(posix_spawnp)(pid, file, actions, attr, argv, envp);
    c.path = nono_lookup(file, buf, sizeof(buf));
    errno = saved_errno;
    return nono_launch(&c, argv, envp);
}

/* ------------------------------------------------------------------------------------------------------ */
/* system() and popen(): glibc runs /bin/sh through its internal __posix_spawn, which no hook sees, so
   when sh is routed they are reimplemented here on the launcher (as glibc's sysdeps/posix/system.c and
   libio/iopopen.c do it); when it is not, the real ones run.                                            */

static int nono_routes_sh(void)
{
    struct nono_route r;

    return nono_classify("/bin/sh", -1, &r);
}

/* The shell's argv as glibc 2.36 passes it (no "--"). */
static int nono_spawn_sh(pid_t *pid, const char *cmd, const posix_spawn_file_actions_t *actions,
                         const posix_spawnattr_t *attr)
{
    const char *argv[] = {"sh", "-c", cmd, NULL};
    struct nono_call c = {
        .op = NONO_OP_SPAWN, .path = "/bin/sh", .fd = -1, .pid = pid, .actions = actions, .attr = attr};

    return nono_launch(&c, (char *const *)argv, NONO_ENVIRON);
}

/* POSIX: the caller ignores SIGINT and SIGQUIT while any system() runs. Counted across threads so that
   the last one out restores the handlers the first one in saved (glibc's sa_refcntr). */
static pthread_mutex_t g_system_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long g_system_users;
static struct sigaction g_system_intr, g_system_quit;

int HOOK(system)(const char *cmd)
{
    struct sigaction ign, intr, quit;
    sigset_t chld, omask, reset;
    posix_spawnattr_t attr;
    pid_t pid;
    int ret, status = -1;

    if (!nono_routes_sh())
        return REAL(system)(cmd);
    if (cmd == NULL)
        return 1; /* "is a shell available": the routed one is */

    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    pthread_mutex_lock(&g_system_lock);
    if (g_system_users++ == 0) {
        sigaction(SIGINT, &ign, &g_system_intr);
        sigaction(SIGQUIT, &ign, &g_system_quit);
    }
    intr = g_system_intr;
    quit = g_system_quit;
    pthread_mutex_unlock(&g_system_lock);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, &omask);

    /* The child starts with the caller's mask and default SIGINT/SIGQUIT unless the caller ignored them. */
    sigemptyset(&reset);
    if (intr.sa_handler != SIG_IGN)
        sigaddset(&reset, SIGINT);
    if (quit.sa_handler != SIG_IGN)
        sigaddset(&reset, SIGQUIT);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigmask(&attr, &omask);
    posix_spawnattr_setsigdefault(&attr, &reset);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    ret = nono_spawn_sh(&pid, cmd, NULL, &attr);
    posix_spawnattr_destroy(&attr);

    if (ret == 0) {
        pid_t w;
        do
            w = waitpid(pid, &status, 0);
        while (w < 0 && errno == EINTR);
        if (w != pid)
            status = -1;
    } else {
        status = 127 << 8; /* POSIX: as if the shell exited 127 */
    }

    pthread_mutex_lock(&g_system_lock);
    if (--g_system_users == 0) {
        sigaction(SIGINT, &g_system_intr, NULL);
        sigaction(SIGQUIT, &g_system_quit, NULL);
    }
    pthread_mutex_unlock(&g_system_lock);
    pthread_sigmask(SIG_SETMASK, &omask, NULL);
    if (ret != 0)
        errno = ret;
    return status;
}

/* popen()'s children, for pclose() to wait on and for later popen() children to close (POSIX). */
struct nono_popen {
    FILE *fp;
    pid_t pid;
    struct nono_popen *next;
};
static pthread_mutex_t g_popen_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nono_popen *g_popen_list;

/* A close-on-exec pipe (macOS has no pipe2). */
static int nono_pipe_cloexec(int fds[2])
{
#ifdef __APPLE__
    if (pipe(fds) != 0)
        return -1;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
#else
    return pipe2(fds, O_CLOEXEC);
#endif
}

FILE *HOOK(popen)(const char *cmd, const char *mode)
{
    posix_spawn_file_actions_t actions;
    struct nono_popen *node = NULL;
    FILE *fp = NULL;
    int do_read = 0, do_write = 0, do_cloexec = 0, fds[2];
    int parent_end = -1, child_end = -1, child_std, err = 0, saved_errno = errno;

    if (!nono_routes_sh())
        return REAL(popen)(cmd, mode);
    for (const char *m = mode; *m != '\0'; m++) {
        if (*m == 'r')
            do_read = 1;
        else if (*m == 'w')
            do_write = 1;
        else if (*m == 'e')
            do_cloexec = 1;
        else
            do_read = do_write = 1; /* invalid, as glibc says */
    }
    if (do_read == do_write) {
        errno = EINVAL;
        return NULL;
    }
    node = malloc(sizeof(*node));
    /* Both ends close-on-exec until the child has its end as stdin/stdout, so that no other child
       inherits them (glibc does the same). */
    if (node == NULL || nono_pipe_cloexec(fds) != 0) {
        err = errno;
        goto out;
    }
    parent_end = do_read ? fds[0] : fds[1];
    child_end = do_read ? fds[1] : fds[0];
    child_std = do_read ? STDOUT_FILENO : STDIN_FILENO;
    if (child_end == child_std) {
        /* The pipe took the very fd the child needs: move it, so that dup2 clears close-on-exec. */
        int moved = fcntl(child_end, F_DUPFD_CLOEXEC, 3);
        if (moved < 0) {
            err = errno;
            goto out;
        }
        close(child_end);
        child_end = moved;
    }
    fp = fdopen(parent_end, do_read ? "r" : "w");
    if (fp == NULL) {
        err = errno;
        goto out;
    }
    parent_end = -1; /* fp owns it */

    pthread_mutex_lock(&g_popen_lock);
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, child_end, child_std);
    /* POSIX: streams of earlier popen() calls still open are closed in the new child. */
    for (struct nono_popen *p = g_popen_list; p != NULL; p = p->next)
        if (fileno(p->fp) != child_std)
            posix_spawn_file_actions_addclose(&actions, fileno(p->fp));
    err = nono_spawn_sh(&node->pid, cmd, &actions, NULL);
    posix_spawn_file_actions_destroy(&actions);
    if (err == 0) {
        if (!do_cloexec)
            fcntl(fileno(fp), F_SETFD, 0);
        node->fp = fp;
        node->next = g_popen_list;
        g_popen_list = node;
        node = NULL;
    }
    pthread_mutex_unlock(&g_popen_lock);
out:
    if (child_end >= 0)
        close(child_end);
    if (parent_end >= 0)
        close(parent_end);
    if (err != 0 && fp != NULL) {
        fclose(fp);
        fp = NULL;
    }
    free(node);
    errno = err != 0 ? err : saved_errno;
    return fp;
}

int HOOK(pclose)(FILE *fp)
{
    struct nono_popen **pp, *node = NULL;
    pid_t pid, w;
    int status;

    pthread_mutex_lock(&g_popen_lock);
    for (pp = &g_popen_list; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->fp == fp) {
            node = *pp;
            *pp = node->next;
            break;
        }
    }
    pthread_mutex_unlock(&g_popen_lock);
    if (node == NULL)
        return REAL(pclose)(fp); /* from the real popen(): sh was not routed then */
    pid = node->pid;
    free(node);
    fclose(fp);
    do
        w = waitpid(pid, &status, 0);
    while (w < 0 && errno == EINTR);
    return w == pid ? status : -1;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Load time: the only writer of g.                                                                       */

/* Keeps "name=value" from the environment at load, when there is one and it fits. */
static void nono_capture(int k, const char *name, const char *key)
{
    const char *value = getenv(name);

    g.keep[k].key = key;
    g.keep[k].key_len = strlen(key);
    /* A value too long to keep is not kept (rather than cut into another path). */
    g.keep[k].set = value != NULL && nono_join(g.keep[k].entry, sizeof(g.keep[k].entry), key, 0, value);
}

static void nono_parse_shells(const char *list)
{
    char *p;

    if (!nono_join(g.shells_buf, sizeof(g.shells_buf), list, 0, "")) {
        /* Over-long list: keep what fits, cut at the last whole name. */
        memcpy(g.shells_buf, list, sizeof(g.shells_buf) - 1);
        g.shells_buf[sizeof(g.shells_buf) - 1] = '\0';
        p = strrchr(g.shells_buf, ':');
        if (p != NULL)
            *p = '\0';
    }
    for (p = g.shells_buf; *p != '\0' && g.n_shells < NONO_MAX_SHELLS;) {
        size_t len = strcspn(p, ":");
        int last = p[len] == '\0';
        p[len] = '\0';
        /* A name with a '/' could never equal a basename; "" would match "dir/". */
        if (len > 0 && strchr(p, '/') == NULL)
            g.shells[g.n_shells++] = p;
        if (last)
            break;
        p += len + 1;
    }
}

__attribute__((constructor)) static void nono_init(void)
{
    const char *dir = getenv("NONO_SHIM_DIR"), *shells = getenv("NONO_SHELLS");
    Dl_info info;
    size_t len;

#ifndef __APPLE__
    g.real_execve = (execve_fn *)dlsym(RTLD_NEXT, "execve");
    g.real_execv = (execv_fn *)dlsym(RTLD_NEXT, "execv");
    g.real_execvp = (execvp_fn *)dlsym(RTLD_NEXT, "execvp");
    g.real_execvpe = (execvpe_fn *)dlsym(RTLD_NEXT, "execvpe");
    g.real_fexecve = (fexecve_fn *)dlsym(RTLD_NEXT, "fexecve");
    g.real_posix_spawn = (posix_spawn_fn *)dlsym(RTLD_NEXT, "posix_spawn");
    g.real_posix_spawnp = (posix_spawnp_fn *)dlsym(RTLD_NEXT, "posix_spawnp");
    g.real_system = (system_fn *)dlsym(RTLD_NEXT, "system");
    g.real_popen = (popen_fn *)dlsym(RTLD_NEXT, "popen");
    g.real_pclose = (pclose_fn *)dlsym(RTLD_NEXT, "pclose");
#endif
    /* Only an absolute dir: a relative one would name a different dir after every chdir. */
    if (dir == NULL || dir[0] != '/')
        return;
    len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    /* Room for "/<shell>" after it, shell names being short. */
    if (len + 64 > sizeof(g.shim_dir))
        return;
    memcpy(g.shim_dir, dir, len);
    g.shim_dir[len] = '\0';
    g.shim_dir_len = len;
    nono_parse_shells(shells != NULL ? shells : "sh:bash:dash:zsh");
    if (dladdr((void *)nono_init, &info) != 0 && info.dli_fname != NULL)
        nono_join(g.self, sizeof(g.self), info.dli_fname, 0, "");
    nono_capture(NONO_KEEP_PRELOAD, NONO_PRELOAD_VAR, NONO_PRELOAD_VAR "=");
    nono_capture(NONO_KEEP_SOCKET, "NONO_SOCKET", "NONO_SOCKET=");
    nono_capture(NONO_KEEP_SHIM_DIR, "NONO_SHIM_DIR", "NONO_SHIM_DIR=");
    nono_capture(NONO_KEEP_SHELLS, "NONO_SHELLS", "NONO_SHELLS=");
#ifndef __APPLE__
    {
        /* This process is a shim (exec'd from NONO_SHIM_DIR; AT_EXECFN is the path given to execve, the
           script's for a "#!" shim): stay passive, so its own fallback to a real shell cannot loop. */
        const char *execfn = (const char *)getauxval(AT_EXECFN);
        if (execfn != NULL && nono_in_shim_dir(execfn))
            return;
    }
#endif
    g.enabled = 1;
}

#ifdef __APPLE__
/* No execvpe or fexecve in the macOS libc; SIP strips DYLD_* from protected binaries, which is why the
   shell's own exec is rewritten before it happens. */
DYLD_INTERPOSE(nono_hook_execve, execve)
DYLD_INTERPOSE(nono_hook_execv, execv)
DYLD_INTERPOSE(nono_hook_execvp, execvp)
DYLD_INTERPOSE(nono_hook_execl, execl)
DYLD_INTERPOSE(nono_hook_execlp, execlp)
DYLD_INTERPOSE(nono_hook_execle, execle)
DYLD_INTERPOSE(nono_hook_posix_spawn, posix_spawn)
DYLD_INTERPOSE(nono_hook_posix_spawnp, posix_spawnp)
DYLD_INTERPOSE(nono_hook_system, system)
DYLD_INTERPOSE(nono_hook_popen, popen)
DYLD_INTERPOSE(nono_hook_pclose, pclose)
#endif

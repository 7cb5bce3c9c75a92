/*
 * The notify loop's hot path, without the GIL: receive, read the path once, resolve it lexically, look
 * it up in the Landlock baseline's rights, CONTINUE. Everything else goes to the Python handlers.
 *
 * What this answers is exactly what NotifyLoop's lexical fast path answers (supervisor/linux/notify.py):
 * CONTINUE where the Landlock baseline alone grants what the call needs on the path as read (invariant
 * 1: whatever the path really is, or becomes after a swap, the kernel then applies the same Landlock
 * rules). Relative paths are made absolute against the target's cwd or dirfd read from /proc/TID/cwd and
 * /proc/TID/fd/N; magic names (/proc, /dev/fd, /dev/std) are never fast; the path is normalised as
 * os.path.normpath does. Anything else (a miss, a read that failed, an unusual flag, a syscall with no
 * fast path) is handed to the Python callback with the bytes already read, so the Python pipeline decides
 * on the same read (invariant 2), with the same decisions and the same reports as without this file.
 *
 * Which syscalls are trapped, and where their arguments are, is not known here: the table comes from
 * seccomp.TRAPS (NotifyLoop builds it; test_speed_native checks it entry by entry).
 *
 * Threads: serve() is called from the command's NotifyLoop thread, releases the GIL for the whole loop and
 * takes it back only to call the callback. One Loop per command; nothing here is shared between loops but
 * the Rights table (read-only once built). One thread serves a Loop at a time: when the callback returns
 * true, its thread held a question for the human and another thread has called serve() meanwhile (after
 * the callback had copied what it needed out of the buffers), so this serve() returns without touching them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h> /* capget/capset structs: the kernel's own (also _spawn.c) */
#include <linux/seccomp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <pthread.h>
#include <unistd.h>

#ifndef SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE 1
#endif
#ifndef SECCOMP_IOCTL_NOTIF_RECV
#define SECCOMP_IOCTL_NOTIF_RECV 0xc0502100
#define SECCOMP_IOCTL_NOTIF_SEND 0xc0182101
#endif

#define PATH_MAX_ 4096
#define LINK_MAX_ 8192
#define MAX_NR 1024
#define AT_FDCWD_32 0xFFFFFF9Cu
#define AT_REMOVEDIR_ 0x200
#define O_TMPFILE_BIT 020000000 /* __O_TMPFILE, as notify._O_TMPFILE */
#define SETID_BITS 06000
#define CREATED_MAX (1u << 20) /* undo: at most this much of created paths waits for Python */

/* Landlock rights (include/uapi/linux/landlock.h), as landlock.ACCESS_FS */
#define LL_EXECUTE (1ull << 0)
#define LL_WRITE_FILE (1ull << 1)
#define LL_READ_FILE (1ull << 2)
#define LL_READ_DIR (1ull << 3)
#define LL_REMOVE_DIR (1ull << 4)
#define LL_REMOVE_FILE (1ull << 5)
#define LL_MAKE_CHAR (1ull << 6)
#define LL_MAKE_DIR (1ull << 7)
#define LL_MAKE_REG (1ull << 8)
#define LL_MAKE_SOCK (1ull << 9)
#define LL_MAKE_FIFO (1ull << 10)
#define LL_MAKE_BLOCK (1ull << 11)
#define LL_MAKE_SYM (1ull << 12)
#define LL_REFER (1ull << 13)
#define LL_TRUNCATE (1ull << 14)

/* Fast-path kinds; the numbers are shared with notify._NATIVE_KINDS. */
enum kind {
    K_NONE = 0, /* always Python */
    K_OPEN = 1, /* open, openat: path, dirfd, flags, mode */
    K_CREAT = 2,
    K_EXEC = 3,
    K_UNLINK = 4, /* unlink, unlinkat (flags: AT_REMOVEDIR) */
    K_RMDIR = 5,
    K_MKDIR = 6,
    K_MKNOD = 7,
    K_SYMLINK = 8, /* the target (argument 0) is read first, as _on_symlink does */
    K_RENAME = 9,
    K_TRUNCATE = 10,
    K_LAST = 10,
};

struct trap {
    int8_t kind, path, dirfd, flags, mode, path2, dirfd2;
};

/* ---- Rights: the Landlock baseline's rules, as RightsIndex ------------------------------------------- */

typedef struct {
    PyObject_HEAD
    uint64_t handled;
    size_t mask; /* table size - 1 (a power of two) */
    char **keys;
    size_t *lens;
    uint64_t *rights;
    Py_ssize_t count;
    /* aliases: a symlinked prefix -> the real path it leads to (RightsIndex.dealias) */
    size_t amask;
    char **akeys, **avalues;
    size_t *alens, *avlens;
    Py_ssize_t acount;
} Rights;

#define MAX_ALIASES 8 /* landlock._MAX_ALIASES */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int rights_lookup(const Rights *r, const char *s, size_t n, uint64_t *out) {
    size_t i = (size_t)hash_bytes(s, n) & r->mask;
    while (r->keys[i]) {
        if (r->lens[i] == n && memcmp(r->keys[i], s, n) == 0) {
            *out = r->rights[i];
            return 1;
        }
        i = (i + 1) & r->mask;
    }
    return 0;
}

static const char *alias_lookup(const Rights *r, const char *s, size_t n, size_t *vlen) {
    size_t i = (size_t)hash_bytes(s, n) & r->amask;
    while (r->akeys[i]) {
        if (r->alens[i] == n && memcmp(r->akeys[i], s, n) == 0) {
            *vlen = r->avlens[i];
            return r->avalues[i];
        }
        i = (i + 1) & r->amask;
    }
    return NULL;
}

/* RightsIndex.dealias into out (room bytes); its length, or 0 if it does not fit. */
static size_t dealias(const Rights *r, const char *path, size_t n, char *out, size_t room) {
    if (n >= room)
        return 0;
    memmove(out, path, n);
    out[n] = 0;
    if (!r->acount)
        return n;
    for (int round = 0; round < MAX_ALIASES; round++) {
        size_t prefix = n, vlen;
        const char *target;
        for (;;) {
            target = alias_lookup(r, out, prefix, &vlen);
            if (target)
                break;
            if (prefix <= 1)
                return n;
            size_t cut = prefix - 1;
            while (cut > 0 && out[cut] != '/')
                cut--;
            prefix = cut ? cut : 1;
        }
        size_t rest = n - prefix;
        if (vlen + rest >= room)
            return 0;
        memmove(out + vlen, out + prefix, rest);
        memcpy(out, target, vlen);
        n = vlen + rest;
        out[n] = 0;
    }
    return n;
}

/* RightsIndex.allows: the union of the rules on the path and on each ancestor covers ``needed``. */
static int rights_allow(const Rights *r, const char *path, size_t n, uint64_t needed) {
    uint64_t granted = 0, got;
    needed &= r->handled;
    if ((granted & needed) == needed)
        return 1;
    if (rights_lookup(r, path, n, &got))
        granted |= got;
    while (n > 1) {
        if ((granted & needed) == needed)
            return 1;
        size_t cut = n - 1;
        while (cut > 0 && path[cut] != '/')
            cut--;
        n = cut ? cut : 1; /* path[:rindex("/")] or "/" */
        if (rights_lookup(r, path, n, &got))
            granted |= got;
    }
    return (granted & needed) == needed;
}

static void Rights_dealloc(Rights *self) {
    if (self->keys) {
        for (size_t i = 0; i <= self->mask; i++)
            PyMem_Free(self->keys[i]);
    }
    if (self->akeys) {
        for (size_t i = 0; i <= self->amask; i++) {
            PyMem_Free(self->akeys[i]);
            PyMem_Free(self->avalues[i]);
        }
    }
    PyMem_Free(self->akeys);
    PyMem_Free(self->avalues);
    PyMem_Free(self->alens);
    PyMem_Free(self->avlens);
    PyMem_Free(self->keys);
    PyMem_Free(self->lens);
    PyMem_Free(self->rights);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static char *copy_bytes(const char *s, Py_ssize_t n) {
    char *out = PyMem_Malloc(n ? n : 1);
    if (out)
        memcpy(out, s, n);
    return out;
}

/* Rights(rules: list[tuple[bytes, int]], handled: int, aliases: list[tuple[bytes, bytes]] = []) */
static int Rights_init(Rights *self, PyObject *args, PyObject *kw) {
    PyObject *rules, *aliases = NULL;
    unsigned long long handled;
    (void)kw;
    if (!PyArg_ParseTuple(args, "O!K|O!", &PyList_Type, &rules, &handled, &PyList_Type, &aliases))
        return -1;
    if (self->keys) {
        PyErr_SetString(PyExc_RuntimeError, "Rights is built once");
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(rules);
    size_t size = 16;
    while (size < (size_t)count * 2 + 1)
        size *= 2;
    self->keys = PyMem_Calloc(size, sizeof(char *));
    self->lens = PyMem_Calloc(size, sizeof(size_t));
    self->rights = PyMem_Calloc(size, sizeof(uint64_t));
    self->mask = size - 1;
    self->handled = handled;
    if (!self->keys || !self->lens || !self->rights) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *item = PyList_GET_ITEM(rules, k);
        const char *path;
        Py_ssize_t n;
        unsigned long long bits;
        if (!PyArg_ParseTuple(item, "y#K", &path, &n, &bits))
            return -1;
        size_t i = (size_t)hash_bytes(path, (size_t)n) & self->mask;
        while (self->keys[i] && !(self->lens[i] == (size_t)n && memcmp(self->keys[i], path, n) == 0))
            i = (i + 1) & self->mask;
        if (!self->keys[i]) {
            self->keys[i] = PyMem_Malloc(n ? n : 1);
            if (!self->keys[i]) {
                PyErr_NoMemory();
                return -1;
            }
            memcpy(self->keys[i], path, n);
            self->lens[i] = (size_t)n;
            self->count++;
        }
        self->rights[i] |= bits; /* a dict keeps the last; the plan has each path once */
    }
    Py_ssize_t acount = aliases ? PyList_GET_SIZE(aliases) : 0;
    size_t asize = 4;
    while (asize < (size_t)acount * 2 + 1)
        asize *= 2;
    self->akeys = PyMem_Calloc(asize, sizeof(char *));
    self->avalues = PyMem_Calloc(asize, sizeof(char *));
    self->alens = PyMem_Calloc(asize, sizeof(size_t));
    self->avlens = PyMem_Calloc(asize, sizeof(size_t));
    self->amask = asize - 1;
    if (!self->akeys || !self->avalues || !self->alens || !self->avlens) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < acount; k++) {
        const char *link, *real;
        Py_ssize_t ln, rn;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(aliases, k), "y#y#", &link, &ln, &real, &rn))
            return -1;
        size_t i = (size_t)hash_bytes(link, (size_t)ln) & self->amask;
        while (self->akeys[i] && !(self->alens[i] == (size_t)ln && memcmp(self->akeys[i], link, ln) == 0))
            i = (i + 1) & self->amask;
        if (!self->akeys[i]) {
            self->acount++;
        } else {
            PyMem_Free(self->akeys[i]);
            PyMem_Free(self->avalues[i]);
        }
        self->akeys[i] = copy_bytes(link, ln);
        self->avalues[i] = copy_bytes(real, rn);
        if (!self->akeys[i] || !self->avalues[i]) {
            PyErr_NoMemory();
            return -1;
        }
        self->alens[i] = (size_t)ln;
        self->avlens[i] = (size_t)rn;
    }
    return 0;
}

static PyObject *Rights_allows(Rights *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    unsigned long long needed;
    char out[3 * PATH_MAX_];
    if (!PyArg_ParseTuple(args, "y#K", &path, &n, &needed))
        return NULL;
    size_t m = dealias(self, path, (size_t)n, out, sizeof out);
    return PyBool_FromLong(m && rights_allow(self, out, m, needed));
}

static PyObject *Rights_dealias(Rights *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    char out[3 * PATH_MAX_];
    if (!PyArg_ParseTuple(args, "y#", &path, &n))
        return NULL;
    size_t m = dealias(self, path, (size_t)n, out, sizeof out);
    if (!m)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(out, (Py_ssize_t)m);
}

static PyMethodDef Rights_methods[] = {
    {"allows", (PyCFunction)Rights_allows, METH_VARARGS, "RightsIndex.allows on a bytes path (tests)."},
    {"dealias", (PyCFunction)Rights_dealias, METH_VARARGS, "RightsIndex.dealias on a bytes path (tests)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RightsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nono_supervisor.linux._notify.Rights",
    .tp_basicsize = sizeof(Rights),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The Landlock baseline's rules (path bytes -> rights), for the C fast path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rights_init,
    .tp_dealloc = (destructor)Rights_dealloc,
    .tp_methods = Rights_methods,
};

/* ---- Stamps: landlock.NotedFs.still_valid in C --------------------------------------------------------- */

struct stamp {
    char *path;
    int kind;         /* 0: identity (lstat), 1: listing (stat) */
    int present;      /* what was noted existed */
    uint64_t a, b, c, d; /* identity: dev, ino, type; listing: dev, ino, mtime_ns, ctime_ns */
    char *target;     /* identity of a symlink: its text */
    size_t target_len;
};

typedef struct {
    PyObject_HEAD
    struct stamp *items;
    Py_ssize_t count;
} Stamps;

static void Stamps_dealloc(Stamps *self) {
    for (Py_ssize_t i = 0; i < self->count; i++) {
        PyMem_Free(self->items[i].path);
        PyMem_Free(self->items[i].target);
    }
    PyMem_Free(self->items);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int stamp_add(Stamps *self, PyObject *item, int kind) {
    const char *path;
    Py_ssize_t n;
    PyObject *noted;
    struct stamp *st = &self->items[self->count];
    memset(st, 0, sizeof *st);
    if (!PyArg_ParseTuple(item, "y#O", &path, &n, &noted))
        return -1;
    st->path = PyMem_Malloc(n + 1);
    if (!st->path) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(st->path, path, n);
    st->path[n] = 0;
    st->kind = kind;
    self->count++;
    if (noted == Py_None)
        return 0;
    unsigned long long a, b, c;
    if (kind == 0) {
        const char *target;
        Py_ssize_t tn;
        if (!PyArg_ParseTuple(noted, "KKKy#", &a, &b, &c, &target, &tn))
            return -1;
        st->target = PyMem_Malloc(tn + 1);
        if (!st->target) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(st->target, target, tn);
        st->target_len = (size_t)tn;
    } else {
        unsigned long long d;
        if (!PyArg_ParseTuple(noted, "KKKK", &a, &b, &c, &d))
            return -1;
        st->d = d;
    }
    st->present = 1;
    st->a = a, st->b = b, st->c = c;
    return 0;
}

/* Stamps(identities: [(path, (dev, ino, type, link text) | None)], listings: [(path, (dev, ino, mtime_ns,
 * ctime_ns) | None)]) */
static int Stamps_init(Stamps *self, PyObject *args, PyObject *kw) {
    PyObject *identities, *listings;
    (void)kw;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &identities, &PyList_Type, &listings))
        return -1;
    if (self->items) {
        PyErr_SetString(PyExc_RuntimeError, "Stamps is built once");
        return -1;
    }
    Py_ssize_t total = PyList_GET_SIZE(identities) + PyList_GET_SIZE(listings);
    self->items = PyMem_Calloc(total ? total : 1, sizeof(struct stamp));
    if (!self->items) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(identities); i++)
        if (stamp_add(self, PyList_GET_ITEM(identities, i), 0) < 0)
            return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(listings); i++)
        if (stamp_add(self, PyList_GET_ITEM(listings, i), 1) < 0)
            return -1;
    return 0;
}

static int stamp_holds(const struct stamp *st, char *link) {
    struct stat sb;
    if ((st->kind == 0 ? lstat(st->path, &sb) : stat(st->path, &sb)) != 0)
        return !st->present;
    if (!st->present)
        return 0;
    if ((uint64_t)sb.st_dev != st->a || (uint64_t)sb.st_ino != st->b)
        return 0;
    if (st->kind == 1) {
        uint64_t mtime = (uint64_t)sb.st_mtim.tv_sec * 1000000000u + (uint64_t)sb.st_mtim.tv_nsec;
        uint64_t ctime = (uint64_t)sb.st_ctim.tv_sec * 1000000000u + (uint64_t)sb.st_ctim.tv_nsec;
        return mtime == st->c && ctime == st->d;
    }
    if ((uint64_t)(sb.st_mode & S_IFMT) != st->c)
        return 0;
    if (!S_ISLNK(sb.st_mode))
        return st->target_len == 0;
    ssize_t n = readlink(st->path, link, LINK_MAX_);
    if (n < 0) /* as _identity: an unreadable link's text is "\0" */
        return st->target_len == 1 && st->target[0] == 0;
    return (size_t)n == st->target_len && memcmp(link, st->target, (size_t)n) == 0;
}

static PyObject *Stamps_valid(Stamps *self, PyObject *noargs) {
    (void)noargs;
    int ok = 1;
    char *link = PyMem_RawMalloc(LINK_MAX_);
    if (!link)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < self->count && ok; i++) ok = stamp_holds(&self->items[i], link);
    Py_END_ALLOW_THREADS PyMem_RawFree(link);
    return PyBool_FromLong(ok);
}

static PyMethodDef Stamps_methods[] = {
    {"valid", (PyCFunction)Stamps_valid, METH_NOARGS, "Whether every noted lookup still finds the same."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StampsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nono_supervisor.linux._notify.Stamps",
    .tp_basicsize = sizeof(Stamps),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What a Landlock plan's compiler read of the filesystem (landlock.NotedFs), checked in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Stamps_init,
    .tp_dealloc = (destructor)Stamps_dealloc,
    .tp_methods = Stamps_methods,
};

/* ---- Loop ---------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int listener;
    int linked; /* a multi-linked denied file exists: no regular-file open is fast (NotifyLoop._linked) */
    int guarded; /* a denied node moved into the baseline: nothing is fast any more (NotifyLoop.guard) */
    int recording; /* undo: an open that may write goes to Python, which records the file first */
    char *created; /* undo: paths of files created on the fast path, NUL-separated (created()) */
    size_t created_len, created_cap;
    pthread_mutex_t created_lock; /* created() is also called by NotifyLoop's drainer thread */
    int blobs;               /* undo: the store's blobs/ (keep()); -1: files about to be unlinked go to Python */
    long long budget;        /* undo: bytes the fast path may still keep by hard link (keep()) */
    char **prefixes;         /* undo: the trees recorded, then (after nroots) the ones skipped */
    size_t nroots, nprefixes;
    Rights *rights;
    struct trap traps[MAX_NR];
    unsigned long long received, continued, escalated;
    long page;
    /* per-loop buffers: the loop thread is the only user */
    char raw[2][PATH_MAX_ + 1];
    size_t raw_len[2];
    uint64_t raw_addr[2];
    int raw_count;
    char link[LINK_MAX_];
    char joined[LINK_MAX_ + PATH_MAX_ + 2];
    char norm[LINK_MAX_ + PATH_MAX_ + 2];
    char real[3 * PATH_MAX_ + LINK_MAX_];
} Loop;

/* Reader.read_string: the NUL-terminated string at ``address`` (at most PATH_MAX bytes read, split at
 * the page boundary so a string at the end of the last mapped page is still read). 0 on failure:
 * Python then reads it itself and answers EFAULT / ENAMETOOLONG as it would. */
static int read_string(Loop *self, pid_t tid, uint64_t address, int slot) {
    if (address == 0)
        return 0;
    size_t size = PATH_MAX_;
    size_t first = (size_t)(self->page - (long)(address % (uint64_t)self->page));
    if (first > size)
        first = size;
    struct iovec local = {self->raw[slot], size};
    struct iovec remote[2] = {{(void *)(uintptr_t)address, first},
                              {(void *)(uintptr_t)(address + first), size - first}};
    ssize_t got = process_vm_readv(tid, &local, 1, remote, size > first ? 2 : 1, 0);
    if (got <= 0)
        return 0;
    char *end = memchr(self->raw[slot], 0, (size_t)got);
    if (!end)
        return 0;
    self->raw_len[slot] = (size_t)(end - self->raw[slot]);
    self->raw_addr[slot] = address;
    if (self->raw_count <= slot)
        self->raw_count = slot + 1;
    return 1;
}

static int starts(const char *s, size_t n, const char *prefix) {
    size_t p = strlen(prefix);
    return n >= p && memcmp(s, prefix, p) == 0;
}

/* os.path.normpath of an absolute path: one leading slash, or exactly two (POSIX keeps "//"). */
static size_t normpath(const char *in, size_t n, char *out) {
    size_t base = (n >= 2 && in[1] == '/' && (n == 2 || in[2] != '/')) ? 2 : 1;
    size_t o = 0, i = 0;
    while (o < base)
        out[o++] = '/';
    while (i < n) {
        while (i < n && in[i] == '/')
            i++;
        size_t start = i;
        while (i < n && in[i] != '/')
            i++;
        size_t len = i - start;
        if (len == 0 || (len == 1 && in[start] == '.'))
            continue;
        if (len == 2 && in[start] == '.' && in[start + 1] == '.') {
            if (o > base) { /* pop the last component; ".." at the root stays at the root */
                while (o > base && out[o - 1] != '/')
                    o--;
                if (o > base)
                    o--;
            }
            continue;
        }
        if (o > base)
            out[o++] = '/';
        memcpy(out + o, in + start, len);
        o += len;
    }
    out[o] = 0;
    return o;
}

/* NotifyLoop._lexical: the path as read, absolute against the target's cwd or dirfd, normalised.
 * Returns its length in self->norm, or 0 (not for the fast path). */
static size_t lexical(Loop *self, pid_t tid, int has_dirfd, uint64_t dirfd_arg, int slot) {
    const char *raw = self->raw[slot];
    size_t n = self->raw_len[slot];
    const char *path = raw;
    size_t len = n;
    if (n == 0 || raw[0] != '/') {
        uint32_t fd = has_dirfd ? (uint32_t)(dirfd_arg & 0xFFFFFFFFu) : AT_FDCWD_32;
        char where[64];
        if (fd == AT_FDCWD_32)
            snprintf(where, sizeof where, "/proc/%d/cwd", (int)tid);
        else
            snprintf(where, sizeof where, "/proc/%d/fd/%u", (int)tid, fd);
        ssize_t got = readlink(where, self->link, sizeof self->link);
        if (got <= 0 || (size_t)got >= sizeof self->link)
            return 0;
        if (self->link[0] != '/')
            return 0; /* socket:[N], pipe:[N]...: Python decides (it cannot be a fast path) */
        memcpy(self->joined, self->link, (size_t)got);
        self->joined[got] = '/';
        memcpy(self->joined + got + 1, raw, n);
        path = self->joined;
        len = (size_t)got + 1 + n;
    }
    if (starts(path, len, "/proc") || starts(path, len, "/dev/fd") || starts(path, len, "/dev/std"))
        return 0;
    return normpath(path, len, self->norm);
}

/* os.path.dirname of a normalised absolute path: the length of its head. */
static size_t dirname_len(const char *p, size_t n) {
    size_t i = n, j;
    while (i > 0 && p[i - 1] != '/')
        i--;
    for (j = 0; j < i && p[j] == '/'; j++)
        ;
    if (j < i) /* not all slashes: strip the trailing ones */
        while (i > 0 && p[i - 1] == '/')
            i--;
    return i;
}

/* RightsIndex.allows(norm[:n], needed): through the aliases, then the rules. */
static int allows_at(Loop *self, size_t n, uint64_t needed) {
    if (!n)
        return 0;
    size_t m = dealias(self->rights, self->norm, n, self->real, sizeof self->real);
    return m && rights_allow(self->rights, self->real, m, needed);
}

static uint64_t open_rights(uint32_t flags) {
    uint32_t mode = flags & O_ACCMODE;
    uint64_t needed = 0;
    if (mode != O_WRONLY)
        needed |= (flags & O_DIRECTORY) ? LL_READ_DIR : LL_READ_FILE;
    if (mode == O_WRONLY || mode == O_RDWR)
        needed |= LL_WRITE_FILE;
    if (flags & O_TRUNC)
        needed |= LL_TRUNCATE;
    return needed;
}

static uint64_t arg(const struct seccomp_notif *req, int index) { return req->data.args[index]; }

/* Undo: append items (NUL-terminated each) to the queue Loop.created() drains. 0: full, not queued. */
static int queue(Loop *self, const char *const *items, const size_t *lens, int count) {
    size_t need = 0;
    for (int i = 0; i < count; i++)
        need += lens[i] + 1;
    int queued = 0;
    pthread_mutex_lock(&self->created_lock);
    if (self->created_len + need <= CREATED_MAX && self->created_len + need > self->created_cap) {
        size_t cap = self->created_cap ? self->created_cap * 2 : 16384;
        while (cap < self->created_len + need)
            cap *= 2;
        char *grown = realloc(self->created, cap);
        if (grown) {
            self->created = grown;
            self->created_cap = cap;
        }
    }
    if (self->created_len + need <= self->created_cap) { /* else (not drained for long): Python records it */
        for (int i = 0; i < count; i++) {
            memcpy(self->created + self->created_len, items[i], lens[i]);
            self->created[self->created_len + lens[i]] = '\0';
            self->created_len += lens[i] + 1;
        }
        queued = 1;
    }
    pthread_mutex_unlock(&self->created_lock);
    return queued;
}

/* Undo: one item, ``kind`` + norm[:n], then the blob's name (b'U') and the fields (b'U', b'D'). 0: not queued. */
static int queue_item(Loop *self, char kind, size_t n, const char *blob, const char *fields) {
    char tag[PATH_MAX_ + 2];
    if (n + 1 >= sizeof tag)
        return 0;
    tag[0] = kind;
    memcpy(tag + 1, self->norm, n);
    const char *items[3] = {tag, blob ? blob : fields, fields};
    size_t lens[3] = {n + 1, blob ? strlen(blob) : fields ? strlen(fields) : 0, fields ? strlen(fields) : 0};
    return queue(self, items, lens, 1 + (blob != NULL) + (fields != NULL));
}

static int under(const char *path, size_t n, const char *top) {
    size_t m = strlen(top);
    while (m > 1 && top[m - 1] == '/')
        m--;
    return n >= m && memcmp(path, top, m) == 0 && (n == m || path[m] == '/' || m == 1);
}

/* Undo: norm[:n] made real where it goes through a granted symlink (a workdir named by a symlinked path:
 * the recorded trees are real paths, RightsIndex.dealias); its new length, 0 if it does not fit. */
static size_t real_path(Loop *self, size_t n) {
    size_t m = dealias(self->rights, self->norm, n, self->real, sizeof self->real);
    if (!m || m >= sizeof self->norm)
        return 0;
    memcpy(self->norm, self->real, m + 1);
    return m;
}

/* Undo: the path is inside the trees recorded (CommandLog.covers): not the session's temp dir, not /dev. */
static int recorded(Loop *self, size_t n) {
    int covered = 0;
    for (size_t i = 0; i < self->nprefixes; i++)
        if (under(self->norm, n, self->prefixes[i])) {
            if (i >= self->nroots)
                return 0; /* the session's temp and runtime dirs: removed with the session */
            covered = 1;
        }
    return covered;
}

struct open_how_ {
    uint64_t flags, mode, resolve;
};

/* Undo: a regular file about to be unlinked (Landlock lets the command read it and remove it) keeps its
 * inode under a second name in the store: a hard link, no copy, and no wake of Python (rm -rf, make clean,
 * git checkout). The parent is walked without a symlink or magic link (RESOLVE_NO_SYMLINKS: the path kept
 * is the real one), the link checked to be the inode that was looked at, and the item queued for Python's
 * record (CommandLog.kept), which may still drop it (already recorded, over the cap). A directory about to
 * be removed (``directory``: rmdir, AT_REMOVEDIR) has only its mode and times to keep: queued as b'D' +
 * path and its fields, after its files' items (undo replays them backwards: the directory first; rm -rf
 * woke Python once per directory, and drained every file queued before it on the command's time).
 * Anything else, a failure included, goes to Python (undo_calls.record_call): 0. Outside the recorded
 * trees: 1, nothing. */
static int kept(Loop *self, size_t n, int directory) {
    if (self->blobs < 0 || !(n = real_path(self, n)))
        return 0;
    if (!recorded(self, n))
        return 1;
    if (!allows_at(self, n, directory ? LL_READ_DIR : LL_READ_FILE)) /* never keeps what it may not read */
        return 0;
    size_t d = dirname_len(self->norm, n), name = d;
    while (name < n && self->norm[name] == '/')
        name++;
    if (!d || name >= n)
        return 0;
    char saved = self->norm[d];
    self->norm[d] = '\0';
    struct open_how_ how = {O_PATH | O_DIRECTORY | O_CLOEXEC, 0, 0x04 | 0x02}; /* NO_SYMLINKS|NO_MAGICLINKS */
    int parent = (int)syscall(SYS_openat2, AT_FDCWD, self->norm, &how, sizeof how);
    self->norm[d] = saved;
    if (parent < 0)
        return 0;
    int result = 0;
    struct stat sb, kb;
    const char *leaf = self->norm + name;
    if (fstatat(parent, leaf, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
        result = errno == ENOENT; /* the kernel answers ENOENT: nothing to keep */
        goto out;
    }
    char fields[128];
    if (directory) {
        if (!S_ISDIR(sb.st_mode)) /* ENOTDIR, from Python */
            goto out;
        snprintf(fields, sizeof fields, "%o %lld%09ld %lld%09ld %llu", (unsigned)(sb.st_mode & 07777),
                 (long long)sb.st_atim.tv_sec, sb.st_atim.tv_nsec, (long long)sb.st_mtim.tv_sec,
                 sb.st_mtim.tv_nsec, (unsigned long long)sb.st_ino);
        result = queue_item(self, 'D', n, NULL, fields);
        goto out;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_nlink != 1)
        goto out;
    pthread_mutex_lock(&self->created_lock);
    int room = sb.st_size <= self->budget;
    if (room)
        self->budget -= sb.st_size;
    pthread_mutex_unlock(&self->created_lock);
    if (!room)
        goto out;
    static unsigned long long counter;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    char blob[96];
    snprintf(blob, sizeof blob, "c%d-%lld%09ld-%llu", (int)getpid(), (long long)now.tv_sec, now.tv_nsec,
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    if (linkat(parent, leaf, self->blobs, blob, 0) != 0)
        goto refund;
    if (fstatat(self->blobs, blob, &kb, AT_SYMLINK_NOFOLLOW) != 0 || kb.st_dev != sb.st_dev ||
        kb.st_ino != sb.st_ino) {
        unlinkat(self->blobs, blob, 0); /* swapped meanwhile: not what was looked at */
        goto refund;
    }
    snprintf(fields, sizeof fields, "%o %lld%09ld %lld%09ld %lld %llu", (unsigned)(sb.st_mode & 07777),
             (long long)sb.st_atim.tv_sec, sb.st_atim.tv_nsec, (long long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec,
             (long long)sb.st_size, (unsigned long long)sb.st_ino);
    if (!queue_item(self, 'U', n, blob, fields)) {
        unlinkat(self->blobs, blob, 0);
        goto refund;
    }
    result = 1;
    goto out;
refund:
    pthread_mutex_lock(&self->created_lock);
    self->budget += sb.st_size;
    pthread_mutex_unlock(&self->created_lock);
out:
    close(parent);
    return result;
}

static int queue_created(Loop *self, size_t n) { return queue_item(self, 'C', n, NULL, NULL); }

/* The fast path's answer to an open Landlock allows, as without undo: a creation needs make_reg of the
 * parent, or a file already there (NotifyLoop._may_create). */
static int creating_ok(Loop *self, size_t n, uint32_t flags) {
    struct stat sb;
    if (!(flags & (O_CREAT | O_TMPFILE_BIT)) || allows_at(self, dirname_len(self->norm, n), LL_MAKE_REG))
        return 1;
    return stat(self->norm, &sb) == 0 && !S_ISDIR(sb.st_mode);
}

/* Undo: an open that may write is CONTINUEd here only when it creates its file (nothing to keep): the path
 * is queued for Loop.created(), which NotifyLoop drains into the record every second, before a record of a
 * path still queued (queued()) and when the command ends. A file already there (or anything unusual) goes
 * to Python, which keeps it first (undo_calls.record_call). Creations are most of a build's and an
 * install's writes (README "Undo"). */
static int created(Loop *self, size_t n, uint32_t flags) {
    struct stat sb;
    if (self->blobs >= 0 && !(n = real_path(self, n)))
        return 0;
    if (self->blobs >= 0 && !recorded(self, n))
        return creating_ok(self, n, flags); /* not recorded (a compiler's temp file, /dev/null) */
    if (!(flags & O_CREAT) || !allows_at(self, dirname_len(self->norm, n), LL_MAKE_REG))
        return 0;
    if (lstat(self->norm, &sb) == 0 || errno != ENOENT)
        return 0;
    return queue_created(self, n);
}

/* Undo: mkdir, mknod and symlink make an entry (nothing to keep): queued like a created file. One that is
 * already there is left to the kernel (EEXIST; npm's mkdir -p makes a thousand). */
static int made(Loop *self, size_t n) {
    struct stat sb;
    if (self->blobs >= 0 && !(n = real_path(self, n)))
        return 0;
    if ((self->blobs >= 0 && !recorded(self, n)) || lstat(self->norm, &sb) == 0)
        return 1;
    return errno == ENOENT && queue_created(self, n);
}

/* 1: CONTINUE. 0: Python decides. The order of reads and checks is the Python handler's. */
static int fast(Loop *self, const struct seccomp_notif *req) {
    if (req->data.nr < 0 || req->data.nr >= MAX_NR)
        return 0;
    const struct trap *t = &self->traps[req->data.nr];
    pid_t tid = (pid_t)req->pid;
    size_t n;
    if (__atomic_load_n(&self->guarded, __ATOMIC_ACQUIRE))
        return 0; /* set from another thread (latedeny): every call goes to Python from the next one */
    switch (t->kind) {
    case K_OPEN:
    case K_CREAT: {
        uint32_t flags;
        uint64_t mode;
        if (!read_string(self, tid, arg(req, t->path), 0))
            return 0;
        if (t->kind == K_CREAT) {
            flags = O_CREAT | O_WRONLY | O_TRUNC;
            mode = arg(req, t->mode);
        } else {
            flags = (uint32_t)(arg(req, t->flags) & 0xFFFFFFFFu);
            mode = arg(req, t->mode) & 0xFFFFFFFFu;
        }
        int creating = (flags & (O_CREAT | O_TMPFILE_BIT)) != 0;
        if (creating && (mode & SETID_BITS))
            return 0; /* refused and reported by Python */
        if (flags & O_PATH)
            return 1; /* Landlock grants no right to O_PATH: it reads and writes nothing */
        if (self->linked && !(flags & O_DIRECTORY))
            return 0;
        n = lexical(self, tid, t->dirfd >= 0, t->dirfd >= 0 ? arg(req, t->dirfd) : 0, 0);
        if (!allows_at(self, n, open_rights(flags)))
            return 0;
        if (self->recording && (flags & (O_WRONLY | O_RDWR | O_TRUNC | O_CREAT)))
            return created(self, n, flags);
        return creating_ok(self, n, flags);
    }
    case K_EXEC:
        if (!read_string(self, tid, arg(req, t->path), 0))
            return 0;
        n = lexical(self, tid, t->dirfd >= 0, t->dirfd >= 0 ? arg(req, t->dirfd) : 0, 0);
        return allows_at(self, n, LL_EXECUTE);
    case K_UNLINK:
    case K_RMDIR:
    case K_MKDIR:
    case K_MKNOD:
    case K_SYMLINK: {
        uint64_t needed;
        int slot = 0;
        if (t->kind == K_UNLINK)
            needed = (t->flags >= 0 && (arg(req, t->flags) & AT_REMOVEDIR_)) ? LL_REMOVE_DIR : LL_REMOVE_FILE;
        else if (t->kind == K_RMDIR)
            needed = LL_REMOVE_DIR;
        else if (t->kind == K_MKDIR)
            needed = LL_MAKE_DIR;
        else if (t->kind == K_SYMLINK) {
            needed = LL_MAKE_SYM;
            if (!read_string(self, tid, arg(req, 0), 0))
                return 0;
            slot = 1;
        } else {
            uint32_t mode = (uint32_t)(arg(req, t->mode) & 0xFFFFFFFFu);
            switch (mode & S_IFMT) {
            case 0:
            case S_IFREG:
                needed = LL_MAKE_REG;
                break;
            case S_IFIFO:
                needed = LL_MAKE_FIFO;
                break;
            case S_IFSOCK:
                needed = LL_MAKE_SOCK;
                break;
            case S_IFCHR:
                needed = LL_MAKE_CHAR;
                break;
            case S_IFBLK:
                needed = LL_MAKE_BLOCK;
                break;
            default:
                return 0; /* EINVAL, from Python */
            }
            if (mode & SETID_BITS)
                return 0;
        }
        if (!read_string(self, tid, arg(req, t->path), slot))
            return 0;
        n = lexical(self, tid, t->dirfd >= 0, t->dirfd >= 0 ? arg(req, t->dirfd) : 0, slot);
        if (!n || !allows_at(self, dirname_len(self->norm, n), needed))
            return 0;
        if (!self->recording)
            return 1;
        if (t->kind == K_MKDIR || t->kind == K_MKNOD || t->kind == K_SYMLINK)
            return made(self, n);
        return kept(self, n, needed == LL_REMOVE_DIR);
    }
    case K_RENAME: {
        const uint64_t moving = LL_REMOVE_FILE | LL_REMOVE_DIR | LL_MAKE_REG | LL_MAKE_DIR | LL_REFER;
        if (!read_string(self, tid, arg(req, t->path), 0) || !read_string(self, tid, arg(req, t->path2), 1))
            return 0;
        n = lexical(self, tid, t->dirfd >= 0, t->dirfd >= 0 ? arg(req, t->dirfd) : 0, 0);
        if (!n || !allows_at(self, dirname_len(self->norm, n), moving))
            return 0;
        n = lexical(self, tid, t->dirfd2 >= 0, t->dirfd2 >= 0 ? arg(req, t->dirfd2) : 0, 1);
        return n && allows_at(self, dirname_len(self->norm, n), moving);
    }
    case K_TRUNCATE:
        if (!read_string(self, tid, arg(req, t->path), 0))
            return 0;
        if (self->linked)
            return 0;
        n = lexical(self, tid, 0, 0, 0);
        return allows_at(self, n, LL_TRUNCATE | LL_WRITE_FILE);
    default:
        return 0;
    }
}

static void send_continue(Loop *self, uint64_t id) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    /* ENOENT: the target was signalled or died meanwhile; anything else: the request is gone too */
    (void)ioctl(self->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

static PyObject *escalate(Loop *self, PyObject *callback, const struct seccomp_notif *req) {
    PyObject *preread = PyTuple_New(self->raw_count);
    if (!preread)
        return NULL;
    for (int i = 0; i < self->raw_count; i++) {
        PyObject *pair = Py_BuildValue("(Ky#)", (unsigned long long)self->raw_addr[i], self->raw[i],
                                       (Py_ssize_t)self->raw_len[i]);
        if (!pair) {
            Py_DECREF(preread);
            return NULL;
        }
        PyTuple_SET_ITEM(preread, i, pair);
    }
    const __u64 *a = req->data.args;
    PyObject *result = PyObject_CallFunction(
        callback, "KIi(KKKKKK)N", (unsigned long long)req->id, (unsigned int)req->pid, (int)req->data.nr,
        (unsigned long long)a[0], (unsigned long long)a[1], (unsigned long long)a[2],
        (unsigned long long)a[3], (unsigned long long)a[4], (unsigned long long)a[5], preread);
    return result;
}

/* emulate.drop_capabilities: clear the calling thread's effective capabilities (credentials are per
 * thread), so that what the supervisor does for a command the kernel checks as for the command. 0 or errno:
 * fails closed (serve then answers nothing and the command does not run), also when the kernel, asked
 * again, still shows an effective capability. */
static int drop_effective_capabilities(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &header, data) != 0)
        return errno ? errno : EPERM;
    data[0].effective = data[1].effective = 0;
    if (syscall(SYS_capset, &header, data) != 0 || syscall(SYS_capget, &header, data) != 0)
        return errno ? errno : EPERM;
    return data[0].effective || data[1].effective ? EPERM : 0;
}

/* serve(callback): answer until every process under the filter has exited, or until the callback returns
 * true (its thread holds a question; another thread serves). */
static PyObject *Loop_serve(Loop *self, PyObject *args) {
    PyObject *callback;
    if (!PyArg_ParseTuple(args, "O", &callback))
        return NULL;
    int err = drop_effective_capabilities();
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct seccomp_notif req;
    struct pollfd pfd = {self->listener, POLLIN, 0};
    PyThreadState *ts = PyEval_SaveThread();
    for (;;) {
        int ready = poll(&pfd, 1, -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;
            PyEval_RestoreThread(ts);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (pfd.revents & (POLLHUP | POLLERR))
            break; /* every process under the filter has exited */
        memset(&req, 0, sizeof req); /* RECV wants a zeroed buffer */
        if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
            if (errno == ENOENT || errno == EINTR)
                continue; /* the target died or was signalled between poll and recv */
            int err = errno;
            PyEval_RestoreThread(ts);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        self->received++;
        self->raw_count = 0;
        if (fast(self, &req)) {
            self->continued++;
            send_continue(self, req.id);
            continue;
        }
        self->escalated++;
        PyEval_RestoreThread(ts);
        PyObject *result = escalate(self, callback, &req);
        if (!result)
            return NULL; /* the callback let an exception out (SystemExit...): the loop ends */
        int handed_over = PyObject_IsTrue(result);
        Py_DECREF(result);
        if (handed_over)
            Py_RETURN_TRUE; /* this thread held a question; another serves: the buffers are its now */
        ts = PyEval_SaveThread();
    }
    PyEval_RestoreThread(ts);
    Py_RETURN_NONE;
}

/* decide(nr, pid, args, reads): the fast path's verdict for one made-up notification (tests): True for
 * CONTINUE. ``reads`` stands in for the target's memory: the strings at the addresses the args name. */
/* Undo: keep(blobs_fd, roots, skip, budget): let the fast path keep files about to be unlinked (below). */
static PyObject *Loop_keep(Loop *self, PyObject *args) {
    int blobs;
    long long budget;
    PyObject *roots, *skip;
    if (!PyArg_ParseTuple(args, "iO!O!L", &blobs, &PyTuple_Type, &roots, &PyTuple_Type, &skip, &budget))
        return NULL;
    pthread_mutex_lock(&self->created_lock);
    self->budget = budget;
    pthread_mutex_unlock(&self->created_lock);
    if (self->prefixes || blobs < 0)
        Py_RETURN_NONE; /* set once: later calls give a new budget only */
    Py_ssize_t nr = PyTuple_GET_SIZE(roots), ns = PyTuple_GET_SIZE(skip);
    char **prefixes = calloc((size_t)(nr + ns) + 1, sizeof *prefixes);
    if (!prefixes)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < nr + ns; i++) {
        PyObject *item = i < nr ? PyTuple_GET_ITEM(roots, i) : PyTuple_GET_ITEM(skip, i - nr);
        const char *text = PyBytes_AsString(item);
        if (!text || !(prefixes[i] = strdup(text))) {
            for (Py_ssize_t j = 0; j < i; j++)
                free(prefixes[j]);
            free(prefixes);
            return text ? PyErr_NoMemory() : NULL;
        }
    }
    self->prefixes = prefixes;
    self->nroots = (size_t)nr;
    self->nprefixes = (size_t)(nr + ns);
    self->blobs = blobs;
    Py_RETURN_NONE;
}

/* The paths created on the fast path since the last call (undo), oldest first; the queue is emptied. */
static PyObject *Loop_created(Loop *self, PyObject *noargs) {
    (void)noargs;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    pthread_mutex_lock(&self->created_lock);
    for (size_t i = 0; i < self->created_len;) {
        size_t n = strlen(self->created + i);
        PyObject *path = PyBytes_FromStringAndSize(self->created + i, (Py_ssize_t)n);
        if (!path || PyList_Append(out, path) < 0) {
            pthread_mutex_unlock(&self->created_lock);
            Py_XDECREF(path);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(path);
        i += n + 1;
    }
    self->created_len = 0;
    pthread_mutex_unlock(&self->created_lock);
    return out;
}

/* Undo: whether a queued item (created() not called since) is ``path``, inside it or above it, or the queue
 * is half full. The records of related paths must keep their order: undo replays them backwards, so a
 * directory's rmdir recorded before the unlinks of its files (kept here, still queued) would be put back
 * after them. NotifyLoop drains the queue before recording such a path, and leaves it to the drainer
 * otherwise (draining at every escalation put npm install's thousand records on the command's own time). */
static int related(const char *a, size_t an, const char *b, size_t bn) {
    size_t n = an < bn ? an : bn;
    return memcmp(a, b, n) == 0 && (an == bn || (an < bn ? b[an] : a[bn]) == '/');
}

static PyObject *Loop_queued(Loop *self, PyObject *args) {
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y#", &path, &n))
        return NULL;
    pthread_mutex_lock(&self->created_lock);
    int found = self->created_len > CREATED_MAX / 2; /* drained now rather than full (then all goes to Python) */
    for (size_t i = 0; i < self->created_len && !found;) {
        const char *item = self->created + i;
        size_t len = strlen(item);
        found = len > 1 && related(item + 1, len - 1, path, (size_t)n);
        i += len + 1;
        for (int skip = item[0] == 'U' ? 2 : item[0] == 'D'; skip > 0 && i < self->created_len; skip--)
            i += strlen(self->created + i) + 1; /* U: then its blob and fields; D: its fields */
    }
    pthread_mutex_unlock(&self->created_lock);
    return PyBool_FromLong(found);
}

static PyObject *Loop_stats(Loop *self, PyObject *noargs) {
    (void)noargs;
    return Py_BuildValue("{s:K,s:K,s:K}", "received", self->received, "continued", self->continued,
                         "escalated", self->escalated);
}

static PyObject *Loop_fast(Loop *self, PyObject *args) {
    /* fast(nr, tid, args6): the verdict on a notification whose strings live in the calling process
     * (tid = our own thread id): the tests compare it with the Python fast path. */
    int nr;
    unsigned int tid;
    unsigned long long a[6];
    if (!PyArg_ParseTuple(args, "iI(KKKKKK)", &nr, &tid, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5]))
        return NULL;
    struct seccomp_notif req;
    memset(&req, 0, sizeof req);
    req.pid = tid;
    req.data.nr = nr;
    for (int i = 0; i < 6; i++)
        req.data.args[i] = a[i];
    self->raw_count = 0;
    int verdict;
    Py_BEGIN_ALLOW_THREADS verdict = fast(self, &req);
    Py_END_ALLOW_THREADS return PyBool_FromLong(verdict);
}

static PyObject *Loop_guard(Loop *self, PyObject *noargs) {
    (void)noargs;
    __atomic_store_n(&self->guarded, 1, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *Loop_table(Loop *self, PyObject *noargs) {
    (void)noargs;
    PyObject *out = PyDict_New();
    if (!out)
        return NULL;
    for (int nr = 0; nr < MAX_NR; nr++) {
        const struct trap *t = &self->traps[nr];
        if (t->kind < 0)
            continue;
        PyObject *entry = Py_BuildValue("(iiiiiii)", t->kind, t->path, t->dirfd, t->flags, t->mode, t->path2,
                                        t->dirfd2);
        PyObject *key = PyLong_FromLong(nr);
        if (!entry || !key || PyDict_SetItem(out, key, entry) < 0) {
            Py_XDECREF(entry);
            Py_XDECREF(key);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(entry);
        Py_DECREF(key);
    }
    return out;
}

static void Loop_dealloc(Loop *self) {
    for (size_t i = 0; i < self->nprefixes; i++)
        free(self->prefixes[i]);
    free(self->prefixes);
    pthread_mutex_destroy(&self->created_lock);
    free(self->created);
    Py_XDECREF(self->rights);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Loop(listener, rights, table: dict[nr, (kind, path, dirfd, flags, mode, path2, dirfd2)], linked,
 * recording=False) */
static int Loop_init(Loop *self, PyObject *args, PyObject *kw) {
    int listener, linked, recording = 0;
    PyObject *rights, *table;
    (void)kw;
    if (!PyArg_ParseTuple(args, "iO!O!p|p", &listener, &RightsType, &rights, &PyDict_Type, &table, &linked,
                          &recording))
        return -1;
    for (int nr = 0; nr < MAX_NR; nr++)
        self->traps[nr].kind = -1;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(table, &pos, &key, &value)) {
        long nr = PyLong_AsLong(key);
        int f[7];
        if (nr == -1 && PyErr_Occurred())
            return -1;
        if (!PyArg_ParseTuple(value, "iiiiiii", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6]))
            return -1;
        if (nr < 0 || nr >= MAX_NR || f[0] < 0 || f[0] > K_LAST) {
            PyErr_Format(PyExc_ValueError, "bad trap table entry for syscall %ld", nr);
            return -1;
        }
        for (int i = 1; i < 7; i++) {
            if (f[i] < -1 || f[i] > 5) {
                PyErr_Format(PyExc_ValueError, "bad argument index for syscall %ld", nr);
                return -1;
            }
        }
        int needs_path = f[0] != K_NONE;
        if ((needs_path && f[1] < 0) || (f[0] == K_OPEN && (f[3] < 0 || f[4] < 0)) ||
            (f[0] == K_CREAT && f[4] < 0) || (f[0] == K_MKNOD && f[4] < 0) || (f[0] == K_RENAME && f[5] < 0)) {
            PyErr_Format(PyExc_ValueError, "incomplete trap table entry for syscall %ld", nr);
            return -1;
        }
        struct trap *t = &self->traps[nr];
        t->kind = (int8_t)f[0];
        t->path = (int8_t)f[1];
        t->dirfd = (int8_t)f[2];
        t->flags = (int8_t)f[3];
        t->mode = (int8_t)f[4];
        t->path2 = (int8_t)f[5];
        t->dirfd2 = (int8_t)f[6];
    }
    Py_INCREF(rights);
    Py_XSETREF(self->rights, (Rights *)rights);
    self->listener = listener;
    self->linked = linked;
    self->recording = recording;
    self->blobs = -1;
    pthread_mutex_init(&self->created_lock, NULL);
    self->page = sysconf(_SC_PAGESIZE);
    return 0;
}

static PyMethodDef Loop_methods[] = {
    {"serve", (PyCFunction)Loop_serve, METH_VARARGS,
     "serve(callback): answer notifications until the listener hangs up; callback(nid, tid, nr, args, "
     "reads) for everything the fast path does not CONTINUE (reads: ((address, bytes), ...) already read); "
     "returns True at once when the callback returns true (its thread handed the loop to another)."},
    {"stats", (PyCFunction)Loop_stats, METH_NOARGS, "Counters: received, continued (here), escalated."},
    {"created", (PyCFunction)Loop_created, METH_NOARGS,
     "What the fast path recorded since the last call: b'C' + path (created), b'D' + path, b'mode atime_ns "
     "mtime_ns ino' (a directory about to be removed), or b'U' + path, blob, "
     "b'mode atime_ns mtime_ns size ino' (kept before an unlink), as NUL-separated items."},
    {"keep", (PyCFunction)Loop_keep, METH_VARARGS, "keep(blobs_fd, roots, skip, budget): see kept()."},
    {"queued", (PyCFunction)Loop_queued, METH_VARARGS, "queued(path): a queued item is path, inside or above it (see related())."},
    {"fast", (PyCFunction)Loop_fast, METH_VARARGS, "fast(nr, tid, args): the fast path's verdict (tests)."},
    {"table", (PyCFunction)Loop_table, METH_NOARGS, "The trap table as given (tests)."},
    {"guard", (PyCFunction)Loop_guard, METH_NOARGS, "Nothing is CONTINUEd here from now on (NotifyLoop.guard)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nono_supervisor.linux._notify.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One command's notify loop: the fast path in C, everything else through a callback.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "nono_supervisor.linux._notify",
    .m_doc = "The seccomp notify loop's GIL-free fast path (see notify.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__notify(void) {
    if (PyType_Ready(&RightsType) < 0 || PyType_Ready(&LoopType) < 0 || PyType_Ready(&StampsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&RightsType);
    Py_INCREF(&LoopType);
    Py_INCREF(&StampsType);
    if (PyModule_AddObject(m, "Rights", (PyObject *)&RightsType) < 0 ||
        PyModule_AddObject(m, "Stamps", (PyObject *)&StampsType) < 0 ||
        PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0 ||
        PyModule_AddIntConstant(m, "K_NONE", K_NONE) < 0 || PyModule_AddIntConstant(m, "K_OPEN", K_OPEN) < 0 ||
        PyModule_AddIntConstant(m, "K_CREAT", K_CREAT) < 0 || PyModule_AddIntConstant(m, "K_EXEC", K_EXEC) < 0 ||
        PyModule_AddIntConstant(m, "K_UNLINK", K_UNLINK) < 0 ||
        PyModule_AddIntConstant(m, "K_RMDIR", K_RMDIR) < 0 || PyModule_AddIntConstant(m, "K_MKDIR", K_MKDIR) < 0 ||
        PyModule_AddIntConstant(m, "K_MKNOD", K_MKNOD) < 0 ||
        PyModule_AddIntConstant(m, "K_SYMLINK", K_SYMLINK) < 0 ||
        PyModule_AddIntConstant(m, "K_RENAME", K_RENAME) < 0 ||
        PyModule_AddIntConstant(m, "K_TRUNCATE", K_TRUNCATE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

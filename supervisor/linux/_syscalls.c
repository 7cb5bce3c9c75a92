/*
 * The numbers of the syscalls the Python side makes by number (libc has no wrapper for them, or the
 * filter names them), taken from this build's kernel headers: they differ between architectures (capget
 * is 125 on x86-64 and 90 on arm64, where 125 is sched_get_priority_max), and x86-64's written by hand in
 * Python made the seccomp probe fail on arm64 and left a root supervisor's capabilities in place (issue 21).
 * supervisor/linux/libc.py is the only reader; tests/test_syscalls.py checks these against libseccomp's
 * table and that no number is written by hand in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/syscall.h>

/* Since Linux 5.1 a new syscall has one number on every architecture but alpha, mips and ia64
 * (arch/.../syscall.tbl, include/uapi/asm-generic/unistd.h): headers older than the syscall still give its
 * number there. Elsewhere a missing name stops the build rather than guessing. */
#if !defined(__alpha__) && !defined(__mips__) && !defined(__ia64__)
#define NONO_UNIFIED_TABLE 1
#endif
#if defined(NONO_UNIFIED_TABLE) && !defined(SYS_openat2)
#define SYS_openat2 437
#endif
#if defined(NONO_UNIFIED_TABLE) && !defined(SYS_pidfd_getfd)
#define SYS_pidfd_getfd 438
#endif
#if defined(NONO_UNIFIED_TABLE) && !defined(SYS_landlock_create_ruleset)
#define SYS_landlock_create_ruleset 444
#endif
#if defined(NONO_UNIFIED_TABLE) && !defined(SYS_landlock_add_rule)
#define SYS_landlock_add_rule 445
#endif
#if defined(NONO_UNIFIED_TABLE) && !defined(SYS_setxattrat)
#define SYS_setxattrat 463
#endif
#if defined(NONO_UNIFIED_TABLE) && !defined(SYS_removexattrat)
#define SYS_removexattrat 466
#endif

static const struct {
    const char *name;
    long number;
} numbers[] = {
    {"capget", SYS_capget},
    {"capset", SYS_capset},
    {"seccomp", SYS_seccomp},
    {"openat2", SYS_openat2},
    {"pidfd_getfd", SYS_pidfd_getfd},
    {"landlock_create_ruleset", SYS_landlock_create_ruleset},
    {"landlock_add_rule", SYS_landlock_add_rule},
    {"setxattrat", SYS_setxattrat},
    {"removexattrat", SYS_removexattrat},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "nono_supervisor.linux._syscalls",
    .m_doc = "NUMBERS: syscall name -> this architecture's number, from the kernel headers of the build.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__syscalls(void) {
    PyObject *m = PyModule_Create(&module);
    PyObject *table = PyDict_New();
    if (!m || !table)
        goto error;
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
        PyObject *value = PyLong_FromLong(numbers[i].number);
        int failed = !value || PyDict_SetItemString(table, numbers[i].name, value) < 0;
        Py_XDECREF(value);
        if (failed)
            goto error;
    }
    if (PyModule_AddObject(m, "NUMBERS", table) < 0)
        goto error;
    return m;
error:
    Py_XDECREF(table);
    Py_XDECREF(m);
    return NULL;
}

/*
 * broken_preload: a shared library the dynamic loader refuses, for tests/test_interpose_route.py. It reads
 * a variable that no object defines; a data reference is bound when the library loads (lazy binding covers
 * only function calls), so both LD_PRELOAD and dlopen fail with "undefined symbol".
 *
 * Build: cc -shared -fPIC -o broken_preload.so broken_preload.c (undefined symbols are allowed in -shared).
 */
extern int nono_test_symbol_nothing_defines;

int nono_test_broken_preload(void)
{
    return nono_test_symbol_nothing_defines;
}

/*
 * kernel_alone.c: runs a command under the route's own kernel mechanisms with nobody to answer them, for
 * bench_speed.py's "kernel alone" mode: the Landlock ruleset the bench compiled for the route's policy
 * (an inherited fd) and the route's seccomp filter with every user notification turned into ALLOW (a
 * file of BPF instructions). What this mode costs over bare is what the kernel itself charges for the
 * policy (Landlock's walk on each open, the seccomp entry path on every syscall): the floor under the
 * route, which the supervisor cannot lower. The route's cost over it is the supervisor's share.
 *
 * usage: kernel_alone RULESET_FD FILTER.bpf PROGRAM [ARG...]   (exits 2 when it cannot apply them)
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: kernel_alone RULESET_FD FILTER.bpf PROGRAM [ARG...]\n");
        return 2;
    }
    static struct sock_filter program[BPF_MAXINSNS];
    FILE *file = fopen(argv[2], "rb");
    if (!file) {
        perror(argv[2]);
        return 2;
    }
    size_t count = fread(program, sizeof program[0], BPF_MAXINSNS, file);
    fclose(file);
    struct sock_fprog filter = {(unsigned short)count, program};
    int ruleset = atoi(argv[1]);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || syscall(SYS_landlock_restrict_self, ruleset, 0) != 0 ||
        close(ruleset) != 0 || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &filter) != 0) {
        perror("kernel_alone");
        return 2;
    }
    execvp(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}

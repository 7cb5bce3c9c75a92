/*
 * spawn_all METHOD PROGRAM ARG0 ARG1 ARG2: run PROGRAM with argv {ARG0, ARG1, ARG2} through one libc
 * spawn function, so tests/test_interpose.py can show each hooked entry point is routed.
 *
 * exec methods replace this process; spawn methods wait and exit with the child's exit status; system
 * and popen run ARG2 as the command (their shell is libc's choice) and exit with its status. Failures
 * print "spawn_all: METHOD: error" and exit 127.
 *
 *   execve execv execvp execvpe execl execlp execle fexecve posix_spawn posix_spawnp system popen
 *   execve-empty-env: execve with envp = {NULL}, as a caller scrubbing its child's environment does
 *   posix_spawn-empty-env: the same through posix_spawn
 *   popen-twice: two popen(ARG2, "r") streams open at once; exits with the second's status
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int fail(const char *method, int err)
{
    fprintf(stderr, "spawn_all: %s: %s\n", method, strerror(err));
    return 127;
}

static int wait_status(const char *method, pid_t pid)
{
    int status;

    if (waitpid(pid, &status, 0) != pid)
        return fail(method, errno);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
    char *empty_env[] = {NULL};
    const char *method, *prog;
    char *args[4];
    pid_t pid;
    int rc;

    if (argc != 6) {
        fprintf(stderr, "usage: spawn_all METHOD PROGRAM ARG0 ARG1 ARG2\n");
        return 2;
    }
    method = argv[1];
    prog = argv[2];
    args[0] = argv[3];
    args[1] = argv[4];
    args[2] = argv[5];
    args[3] = NULL;

    if (strcmp(method, "execve") == 0) {
        execve(prog, args, environ);
    } else if (strcmp(method, "execve-empty-env") == 0) {
        execve(prog, args, empty_env);
    } else if (strcmp(method, "execv") == 0) {
        execv(prog, args);
    } else if (strcmp(method, "execvp") == 0) {
        execvp(prog, args);
    } else if (strcmp(method, "execvpe") == 0) {
        execvpe(prog, args, environ);
    } else if (strcmp(method, "execl") == 0) {
        execl(prog, args[0], args[1], args[2], (char *)NULL);
    } else if (strcmp(method, "execlp") == 0) {
        execlp(prog, args[0], args[1], args[2], (char *)NULL);
    } else if (strcmp(method, "execle") == 0) {
        execle(prog, args[0], args[1], args[2], (char *)NULL, environ);
    } else if (strcmp(method, "fexecve") == 0) {
        int fd = open(prog, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return fail(method, errno);
        fexecve(fd, args, environ);
    } else if (strcmp(method, "posix_spawn") == 0 || strcmp(method, "posix_spawn-empty-env") == 0) {
        rc = posix_spawn(&pid, prog, NULL, NULL, args, strchr(method, '-') ? empty_env : environ);
        return rc != 0 ? fail(method, rc) : wait_status(method, pid);
    } else if (strcmp(method, "posix_spawnp") == 0) {
        rc = posix_spawnp(&pid, prog, NULL, NULL, args, environ);
        return rc != 0 ? fail(method, rc) : wait_status(method, pid);
    } else if (strcmp(method, "system") == 0) {
        rc = system(args[2]);
        if (rc == -1)
            return fail(method, errno);
        return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
    } else if (strcmp(method, "popen") == 0) {
        char buf[256];
        FILE *p = popen(args[2], "r");
        if (p == NULL)
            return fail(method, errno);
        while (fgets(buf, sizeof(buf), p) != NULL)
            fputs(buf, stdout);
        rc = pclose(p);
        if (rc == -1)
            return fail(method, errno);
        return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
    } else if (strcmp(method, "popen-twice") == 0) {
        FILE *first = popen(args[2], "r"), *second;
        if (first == NULL)
            return fail(method, errno);
        second = popen(args[2], "r");
        if (second == NULL)
            return fail(method, errno);
        if (pclose(first) == -1 || (rc = pclose(second)) == -1)
            return fail(method, errno);
        return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
    } else {
        fprintf(stderr, "spawn_all: unknown method %s\n", method);
        return 2;
    }
    return fail(method, errno);
}

/*
 * static_shell: start a shell the way a static agent (Codex: a static musl binary) does, out of reach of
 * LD_PRELOAD. Built with `cc -static` by the tests, so the interposition library never loads into it.
 *
 *   static_shell path PATH ARG0 ARGS...   fork, execve(PATH, {ARG0, ARGS...}), exit with its status
 *   static_shell passwd ARGS...           the same with the passwd shell of the caller's uid, read from
 *                                          /etc/passwd (what an agent's "login shell" lookup finds)
 *   static_shell shell ARGS...            $SHELL, taken only when its path says bash or zsh (Claude Code's
 *                                          rule), argv[0] being that path
 *   static_shell search NAME ARGS...      execvp(NAME): a PATH lookup (Gemini CLI spawns "bash")
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int run(const char *path, char **argv) {
    int status;
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 126;
    }
    if (pid == 0) {
        execve(path, argv, environ);
        perror(path);
        _exit(127);
    }
    if (waitpid(pid, &status, 0) < 0) {
        perror("waitpid");
        return 126;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The 7th field of the /etc/passwd line of uid, into buf. */
static int passwd_shell(uid_t uid, char *buf, size_t size) {
    char line[1024];
    FILE *f = fopen("/etc/passwd", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        char *field[7] = {0};
        char *p = line;
        int n = 0;
        for (; n < 7 && p; n++) {
            field[n] = p;
            p = strchr(p, ':');
            if (p)
                *p++ = 0;
        }
        if (n == 7 && field[2] && (uid_t)strtoul(field[2], NULL, 10) == uid) {
            field[6][strcspn(field[6], "\n")] = 0;
            snprintf(buf, size, "%s", field[6]);
            fclose(f);
            return 0;
        }
    }
    fclose(f);
    return -1;
}

int main(int argc, char **argv) {
    char shell[512];
    if (argc >= 4 && strcmp(argv[1], "path") == 0)
        return run(argv[2], argv + 3);
    if (argc >= 3 && strcmp(argv[1], "passwd") == 0) {
        if (passwd_shell(getuid(), shell, sizeof shell) != 0) {
            fprintf(stderr, "static_shell: no passwd entry for uid %u\n", (unsigned)getuid());
            return 126;
        }
        argv[1] = shell;
        return run(shell, argv + 1);
    }
    if (argc >= 2 && strcmp(argv[1], "shell") == 0) {
        const char *shell = getenv("SHELL");
        if (!shell || (!strstr(shell, "bash") && !strstr(shell, "zsh"))) {
            fprintf(stderr, "static_shell: SHELL=%s does not say bash or zsh\n", shell ? shell : "");
            return 126;
        }
        argv[1] = (char *)shell;
        return run(shell, argv + 1);
    }
    if (argc >= 3 && strcmp(argv[1], "search") == 0) {
        int status;
        pid_t pid = fork();
        if (pid == 0) {
            execvp(argv[2], argv + 2);
            perror(argv[2]);
            _exit(127);
        }
        if (pid < 0 || waitpid(pid, &status, 0) < 0)
            return 126;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    fprintf(stderr, "usage: static_shell path PATH ARG0 ARGS... | passwd ARGS... | shell ARGS... | search NAME"
                    " ARGS...\n");
    return 2;
}

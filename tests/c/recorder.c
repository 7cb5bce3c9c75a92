/*
 * recorder: stands in for a nono-shell shim in tests/test_interpose.py. Appends one JSON line to
 * recorder.log beside its own binary (argv exactly as received, AT_EXECFN, the environment the
 * interposer must keep, the fds it inherited), then exits 42, a status no real shell command in the
 * tests produces. The log's place comes from /proc/self/exe, not from the environment, so a spawn with a
 * scrubbed env still records.
 *
 * Written in C, not sh: a shim that is itself a shell script would be a shell spawn, and a Python one
 * would lose argv[0] (the kernel replaces it with the interpreter for "#!" files).
 *
 * REC_EXEC_REAL=CMD: after recording, exec the real /bin/sh -c CMD, as a shim falling back to the real
 * shell would; REC_DEPTH stops a routing loop after 3 rounds with status 99 instead of hanging the test.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#define REC_STATUS 42
#define REC_LOOP_STATUS 99
#define REC_MAX_DEPTH 3

static void put_str(FILE *f, const char *s)
{
    if (s == NULL) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* The fds this process inherited, from /proc/self/fd (less the one reading it). */
static void put_fds(FILE *f)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int first = 1;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        fprintf(f, "%s%s", first ? "" : ", ", e->d_name);
        first = 0;
    }
    closedir(d);
}

int main(int argc, char **argv)
{
    static const char *const keys[] = {
        "LD_PRELOAD", "NONO_SOCKET", "NONO_SHIM_DIR", "NONO_SHELLS", "REC_TAG",
    };
    const char *real = getenv("REC_EXEC_REAL"), *depth = getenv("REC_DEPTH");
    char log[4096], *line = NULL, *slash;
    ssize_t n;
    size_t len = 0;
    FILE *f = open_memstream(&line, &len);
    int fd;

    if (f == NULL)
        return 1;
    fputs("{\"argv\": [", f);
    for (int i = 0; i < argc; i++) {
        if (i > 0)
            fputs(", ", f);
        put_str(f, argv[i]);
    }
    fputs("], \"execfn\": ", f);
    put_str(f, (const char *)getauxval(AT_EXECFN));
    fputs(", \"env\": {", f);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        fprintf(f, "%s\"%s\": ", i > 0 ? ", " : "", keys[i]);
        put_str(f, getenv(keys[i]));
    }
    fputs("}, \"fds\": [", f);
    put_fds(f);
    fputs("]}\n", f);
    fclose(f);
    n = readlink("/proc/self/exe", log, sizeof(log) - sizeof("recorder.log"));
    if (n <= 0)
        return 1;
    log[n] = '\0';
    slash = strrchr(log, '/');
    strcpy(slash + 1, "recorder.log");
    fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, line, len) != (ssize_t)len)
        return 1;
    close(fd);
    free(line);

    if (real != NULL) {
        char next[16];
        int d = depth != NULL ? atoi(depth) : 0;
        if (d >= REC_MAX_DEPTH)
            return REC_LOOP_STATUS;
        snprintf(next, sizeof(next), "%d", d + 1);
        setenv("REC_DEPTH", next, 1);
        execl("/bin/sh", "sh", "-c", real, (char *)NULL);
        return 127;
    }
    return REC_STATUS;
}

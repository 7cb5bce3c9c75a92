/* Times N open+close pairs of one file inside the process, so start-up costs do not count. A directory is
 * opened O_DIRECTORY with the raw syscall, unmarked (as libc's scandir opens it: the listing a command's
 * filter still traps, bench/bench_notify.py's trapped open).
 * usage: open_loop PATH N  -> prints nanoseconds per open */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec a, b;
    int n;
    if (argc != 3)
        return 2;
    n = atoi(argv[2]);
    struct stat st;
    int flags = stat(argv[1], &st) == 0 && S_ISDIR(st.st_mode) ? O_RDONLY | O_DIRECTORY : O_RDONLY;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        int fd = (int)syscall(SYS_openat, AT_FDCWD, argv[1], flags, 0);
        if (fd < 0)
            return 1;
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.0f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}

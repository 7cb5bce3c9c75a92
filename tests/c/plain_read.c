/* Reads a file with one plain open(O_RDONLY) (or fopen with -f) and prints it, or "errno=N".
 * Built static and dynamic by tests/test_speed_left_to_landlock.py: a static binary never passes
 * through LD_PRELOAD.
 * usage: plain_read [-f] FILE */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char buf[4096];
    int use_fopen = argc == 3 && strcmp(argv[1], "-f") == 0;
    const char *path = argv[argc - 1];
    if (use_fopen) {
        FILE *f = fopen(path, "r");
        if (!f) {
            printf("errno=%d\n", errno);
            return 1;
        }
        size_t n = fread(buf, 1, sizeof buf, f);
        fwrite(buf, 1, n, stdout);
        return 0;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("errno=%d\n", errno);
        return 1;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    return 0;
}

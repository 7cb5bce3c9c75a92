/* Writes TEXT to FILE with one open(O_WRONLY|O_CREAT|O_TRUNC, 0644) (or fopen(MODE) with -f MODE) and
 * prints "wrote", or "errno=N". Built static and dynamic by tests/test_speed_left_to_landlock.py: a
 * static binary never passes through LD_PRELOAD.
 * usage: plain_write [-f MODE] FILE TEXT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *mode = argc == 5 && strcmp(argv[1], "-f") == 0 ? argv[2] : NULL;
    const char *path = argv[argc - 2], *text = argv[argc - 1];
    if (mode) {
        FILE *f = fopen(path, mode);
        if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
            printf("errno=%d\n", errno);
            return 1;
        }
    } else {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, text, strlen(text)) < 0 || close(fd) != 0) {
            printf("errno=%d\n", errno);
            return 1;
        }
    }
    printf("wrote\n");
    return 0;
}

/* Lists a directory and prints its names in the order read, or "errno=N".
 * Built static and dynamic by tests/test_speed_left_to_landlock.py: a static binary never passes
 * through LD_PRELOAD.
 * usage: list_dir opendir|openat|raw|marked DIR
 *   opendir: opendir(3); openat: openat(2) O_DIRECTORY through libc, then fdopendir (as gnulib's fts in
 *   grep and find); raw: the openat syscall itself (mode 0); marked: the raw syscall carrying the retry
 *   library's LISTING_MARK, as any process may. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define LISTING_MARK 0x6e6f6e6f00000000L

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    const char *how = argv[1], *path = argv[2];
    DIR *dir = NULL;
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    if (strcmp(how, "opendir") == 0) {
        dir = opendir(path);
    } else {
        long fd = strcmp(how, "openat") == 0 ? openat(AT_FDCWD, path, flags)
                  : syscall(SYS_openat, AT_FDCWD, path, flags, strcmp(how, "marked") == 0 ? LISTING_MARK : 0L);
        dir = fd >= 0 ? fdopendir((int)fd) : NULL;
    }
    if (!dir) {
        printf("errno=%d\n", errno);
        return 1;
    }
    for (struct dirent *entry; (entry = readdir(dir));)
        if (strcmp(entry->d_name, ".") && strcmp(entry->d_name, ".."))
            printf("%s\n", entry->d_name);
    closedir(dir);
    return 0;
}

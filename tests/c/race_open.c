/* Adversary for DESIGN.md invariant 1: a thread flips the path buffer between a benign file and a secret
 * while the main thread opens it. Prints how many opens returned the secret's bytes.
 * usage: race_open BENIGN SECRET MARKER COUNT */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[4096];
static const char *paths[2];
static volatile int stop;

static void *flipper(void *arg) {
    (void)arg;
    for (unsigned long i = 0; !stop; i++) {
        strcpy(path, paths[i & 1]);
        __asm__ volatile("" ::: "memory"); /* keep every store: the race is the point */
    }
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t thread;
    int leaked = 0, opened = 0, count;
    char buf[4096];
    if (argc != 5)
        return 2;
    paths[0] = argv[1];
    paths[1] = argv[2];
    count = atoi(argv[4]);
    strcpy(path, paths[0]);
    pthread_create(&thread, NULL, flipper, NULL);
    for (int i = 0; i < count; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        opened++;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            if (strstr(buf, argv[3]))
                leaked++;
        }
    }
    stop = 1;
    pthread_join(thread, NULL);
    printf("opened=%d leaked=%d\n", opened, leaked);
    return 0;
}

/* Adversary: open a file through the i386 syscall gate (int 0x80) from a 64-bit process, which an
 * x86_64-only seccomp filter would not recognise. Prints the bytes read, or why it could not.
 * Build with -no-pie so that the path lives below 4 GiB (i386 syscall arguments are 32-bit). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char path[4096];
static char buf[4096];

int main(int argc, char **argv) {
    long fd;
    if (argc != 2)
        return 2;
    strncpy(path, argv[1], sizeof path - 1);
    /* i386: eax=5 (open), ebx=path, ecx=O_RDONLY */
    __asm__ volatile("int $0x80" : "=a"(fd) : "a"(5), "b"(path), "c"(0) : "memory");
    if (fd < 0) {
        printf("int80-open-failed=%ld\n", -fd);
        return 1;
    }
    long n;
    __asm__ volatile("int $0x80" : "=a"(n) : "a"(3), "b"(fd), "c"(buf), "d"(sizeof buf - 1) : "memory");
    if (n > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    return 0;
}

/*
 * nono-shell's client in C: what nono_shell/client.py does, without an interpreter's start-up (a Python
 * client costs 11-19 ms per command here, most of a `bash -c true`'s budget).
 *
 * The shims are scripts whose interpreter is this program (`#!.../nono-shell-client`), so the kernel runs
 * `nono-shell-client SHIM ARGS...`: argv[1] is the shim's path as it was executed, as sys.argv[0] is for
 * the Python shim. Installed as `nono-shell` on PATH (setup.py), it is run directly: argv[0] is the
 * caller's name for the shell, as sys.argv[0] is for the Python client run directly. The same contract:
 * hand the command, its cwd, environment and stdio fds to the supervisor at $NONO_SOCKET (refusing one of
 * another uid), forward signals, exit as the command did; on any failure print one line "nono-shell: ..."
 * and exit 125, having run nothing.
 *
 * The same protocol (nono_shell/protocol.py): a 4-byte big-endian length and a UTF-8 JSON object; OS
 * strings travel as os.fsdecode text (UTF-8, undecodable bytes as surrogate escapes \udcXX), JSON written
 * ASCII-only as json.dumps does; the stdio fds beside the first frame (SCM_RIGHTS). Replies are parsed
 * strictly and checked as protocol.Conversation("client") checks them. tests/test_speed_client.py
 * compares the bytes of the request with the Python client's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define EXIT_FAILURE_ 125
#define CLIENT_NAME "nono-shell-client" /* supervisor/shims.py CLIENT_NAME */
#ifndef NONO_VERSION
#error "NONO_VERSION is set by setup.py from nono_shell.__version__"
#endif
#define MAX_FRAME (8u * 1024 * 1024)
/* From connecting until the supervisor says the command started (or refused it); past it, 125 with one
 * line. client.py's ACCEPT_SECONDS says why 10 s. */
#define ACCEPT_SECONDS 10

extern char **environ;

static int sock = -1;
static const char *socket_path;
static volatile sig_atomic_t command_started = 0;
static struct timespec deadline;

static void fail(const char *fmt, ...) {
    char buf[4096];
    size_t n = 0;
    va_list ap;
    memcpy(buf, "nono-shell: ", 12);
    n = 12;
    va_start(ap, fmt);
    int w = vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
    va_end(ap);
    if (w < 0)
        w = 0;
    n += (size_t)w < sizeof buf - n - 1 ? (size_t)w : sizeof buf - n - 2;
    buf[n++] = '\n';
    ssize_t unused = write(2, buf, n);
    (void)unused;
    _exit(EXIT_FAILURE_);
}

/* ---- a growable buffer ------------------------------------------------------------------------------- */

struct buf {
    char *data;
    size_t len, cap;
};

static void reserve(struct buf *b, size_t more) {
    if (b->len + more <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data)
        fail("out of memory");
    b->data = data;
    b->cap = cap;
}

static void put(struct buf *b, const char *s, size_t n) {
    reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_u(struct buf *b, unsigned long v) {
    char d[24];
    int n = snprintf(d, sizeof d, "%lu", v);
    put(b, d, (size_t)n);
}

static void put_esc(struct buf *b, unsigned cp) {
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', 'u', hex[(cp >> 12) & 15], hex[(cp >> 8) & 15], hex[(cp >> 4) & 15], hex[cp & 15]};
    put(b, e, 6);
}

/* The length of the well-formed UTF-8 sequence at s (as Python's strict decoder accepts it), else 0. */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        if (n >= 2 && (s[1] & 0xC0) == 0x80) {
            *cp = ((c & 0x1F) << 6) | (s[1] & 0x3F);
            return 2;
        }
        return 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[2] & 0xC0) != 0x80)
            return 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F; /* no encoded surrogates */
        if (s[1] < lo || s[1] > hi)
            return 0;
        *cp = ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
        if (s[1] < lo || s[1] > hi)
            return 0;
        *cp = ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        return 4;
    }
    return 0;
}

/* A JSON string of the os.fsdecode text of the bytes s[0:n], ASCII-only (json.dumps, ensure_ascii). */
static void put_str(struct buf *b, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    reserve(b, n + 2);
    b->data[b->len++] = '"';
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t len = utf8_seq(s + i, n - i, &cp);
        if (len == 0) { /* surrogateescape: each undecodable byte is U+DC80..U+DCFF */
            put_esc(b, 0xDC00 + s[i]);
            i++;
            continue;
        }
        i += len;
        if (cp == '"')
            puts_(b, "\\\"");
        else if (cp == '\\')
            puts_(b, "\\\\");
        else if (cp == '\n')
            puts_(b, "\\n");
        else if (cp == '\r')
            puts_(b, "\\r");
        else if (cp == '\t')
            puts_(b, "\\t");
        else if (cp == '\b')
            puts_(b, "\\b");
        else if (cp == '\f')
            puts_(b, "\\f");
        else if (cp >= 0x20 && cp <= 0x7E) {
            reserve(b, 1);
            b->data[b->len++] = (char)cp;
        } else if (cp < 0x10000)
            put_esc(b, cp);
        else {
            cp -= 0x10000;
            put_esc(b, 0xD800 | (cp >> 10));
            put_esc(b, 0xDC00 | (cp & 0x3FF));
        }
    }
    reserve(b, 1);
    b->data[b->len++] = '"';
}

/* ---- the request ------------------------------------------------------------------------------------ */

static const char *basename_of(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static const char *shell_for(const char *argv0) {
    const char *base = basename_of(argv0);
    while (*base == '-')
        base++;
    static const char *shells[] = {"bash", "sh", "dash", "zsh"};
    for (size_t i = 0; i < sizeof shells / sizeof *shells; i++)
        if (strcmp(base, shells[i]) == 0)
            return shells[i];
    return "bash";
}

static void build_request(struct buf *b, int argc, char **argv, int from_shim, const int *stdio,
                          int nstdio) {
    /* From a shim, argv[0] is the shim's basename (the kernel put its path there; the caller's name for the
     * shell is gone), as client.main(from_shim=True) does; run directly, it is the caller's argv[0]. */
    const char *name = from_shim ? basename_of(argv[0]) : argv[0];
    char *cwd = getcwd(NULL, 0);
    if (!cwd) /* deleted under us: the command would have no directory to start in (client.py's words) */
        fail("the current directory is gone (%s); refusing to run", strerror(errno));
    puts_(b, "{\"type\":\"run\",\"shell\":\"");
    puts_(b, shell_for(argv[0]));
    puts_(b, "\",\"argv\":[");
    put_str(b, name, strlen(name));
    for (int i = 1; i < argc; i++) {
        puts_(b, ",");
        put_str(b, argv[i], strlen(argv[i]));
    }
    puts_(b, "],\"cwd\":");
    put_str(b, cwd, strlen(cwd));
    free(cwd);
    puts_(b, ",\"env\":{");
    /* dict(os.environ): entries without '=' are skipped, the first of a repeated name wins */
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        size_t klen = (size_t)(eq - *e);
        int seen = 0;
        for (char **p = environ; p < e && !seen; p++) {
            const char *peq = strchr(*p, '=');
            seen = peq && (size_t)(peq - *p) == klen && memcmp(*p, *e, klen) == 0;
        }
        if (seen)
            continue;
        if (!first)
            puts_(b, ",");
        first = 0;
        put_str(b, *e, klen);
        puts_(b, ":");
        put_str(b, eq + 1, strlen(eq + 1));
    }
    puts_(b, "},\"stdio\":[");
    for (int i = 0; i < nstdio; i++) {
        if (i)
            puts_(b, ",");
        put_u(b, (unsigned long)stdio[i]);
    }
    puts_(b, "],\"tty\":{\"isatty\":[");
    first = 1;
    for (int i = 0; i < nstdio; i++) {
        if (isatty(stdio[i])) {
            if (!first)
                puts_(b, ",");
            first = 0;
            put_u(b, (unsigned long)stdio[i]);
        }
    }
    puts_(b, "]");
    for (int i = 0; i < nstdio; i++) {
        struct winsize ws;
        if (ioctl(stdio[i], TIOCGWINSZ, &ws) == 0) {
            puts_(b, ",\"winsize\":[");
            put_u(b, ws.ws_col);
            puts_(b, ",");
            put_u(b, ws.ws_row);
            puts_(b, "]");
            break;
        }
    }
    puts_(b, "}}");
}

/* ---- signals ---------------------------------------------------------------------------------------- */

static void install(int signo);

static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGWINCH, SIGCONT};

static void forward(int signo) {
    int saved = errno;
    if (!command_started) { /* client.py ENDING_SIGNALS: nothing runs yet, so these end the client */
        if (signo != SIGWINCH && signo != SIGCONT)
            _exit(128 + signo);
        errno = saved;
        return;
    }
    char frame[64];
    char body[48];
    int n = 0;
    const char *head = "{\"type\":\"signal\",\"signo\":";
    while (head[n]) {
        body[n] = head[n];
        n++;
    }
    if (signo >= 10)
        body[n++] = (char)('0' + signo / 10);
    body[n++] = (char)('0' + signo % 10);
    body[n++] = '}';
    frame[0] = frame[1] = frame[2] = 0;
    frame[3] = (char)n;
    memcpy(frame + 4, body, (size_t)n);
    /* the main thread only reads once the command started: this small frame is never interleaved */
    ssize_t unused = send(sock, frame, (size_t)n + 4, MSG_NOSIGNAL);
    (void)unused; /* the supervisor is gone: the receive loop reports it */
    errno = saved;
}

/* ---- the replies ------------------------------------------------------------------------------------ */

struct json {
    const char *s;
    size_t i, n;
    int bad;
};

static void ws(struct json *j) {
    while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r'))
        j->i++;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A JSON string into out (UTF-8; lone surrogates as '?', as the Python client's errors="replace"). */
static void jstring(struct json *j, struct buf *out) {
    if (j->i >= j->n || j->s[j->i] != '"') {
        j->bad = 1;
        return;
    }
    j->i++;
    while (j->i < j->n) {
        unsigned char c = (unsigned char)j->s[j->i++];
        if (c == '"')
            return;
        if (c < 0x20) {
            j->bad = 1; /* strict: no raw control characters */
            return;
        }
        if (c != '\\') {
            if (out)
                put(out, (const char *)&c, 1);
            continue;
        }
        if (j->i >= j->n) {
            j->bad = 1;
            return;
        }
        char e = j->s[j->i++];
        const char *simple = NULL;
        switch (e) {
        case '"': simple = "\""; break;
        case '\\': simple = "\\"; break;
        case '/': simple = "/"; break;
        case 'b': simple = "\b"; break;
        case 'f': simple = "\f"; break;
        case 'n': simple = "\n"; break;
        case 'r': simple = "\r"; break;
        case 't': simple = "\t"; break;
        case 'u': break;
        default: j->bad = 1; return;
        }
        if (simple) {
            if (out)
                puts_(out, simple);
            continue;
        }
        unsigned cp = 0;
        for (int k = 0; k < 4; k++) {
            int h = j->i < j->n ? hexval(j->s[j->i++]) : -1;
            if (h < 0) {
                j->bad = 1;
                return;
            }
            cp = cp * 16 + (unsigned)h;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF && j->i + 6 <= j->n && j->s[j->i] == '\\' && j->s[j->i + 1] == 'u') {
            unsigned lo = 0;
            int ok = 1;
            for (int k = 0; k < 4; k++) {
                int h = hexval(j->s[j->i + 2 + k]);
                if (h < 0)
                    ok = 0;
                lo = lo * 16 + (unsigned)(h < 0 ? 0 : h);
            }
            if (ok && lo >= 0xDC00 && lo <= 0xDFFF) {
                j->i += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
        }
        if (!out)
            continue;
        char u[4];
        if (cp >= 0xD800 && cp <= 0xDFFF)
            puts_(out, "?");
        else if (cp < 0x80) {
            u[0] = (char)cp;
            put(out, u, 1);
        } else if (cp < 0x800) {
            u[0] = (char)(0xC0 | (cp >> 6));
            u[1] = (char)(0x80 | (cp & 0x3F));
            put(out, u, 2);
        } else if (cp < 0x10000) {
            u[0] = (char)(0xE0 | (cp >> 12));
            u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
            u[2] = (char)(0x80 | (cp & 0x3F));
            put(out, u, 3);
        } else {
            u[0] = (char)(0xF0 | (cp >> 18));
            u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
            u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
            u[3] = (char)(0x80 | (cp & 0x3F));
            put(out, u, 4);
        }
    }
    j->bad = 1;
}

enum vtype { V_BAD, V_STR, V_INT, V_OTHER };

static void jskip(struct json *j, int depth);

/* A value: its type; an int's value (clamped), a string's text. */
static enum vtype jvalue(struct json *j, long long *num, struct buf *str, int depth) {
    ws(j);
    if (j->i >= j->n || depth > 64) {
        j->bad = 1;
        return V_BAD;
    }
    char c = j->s[j->i];
    if (c == '"') {
        jstring(j, str);
        return j->bad ? V_BAD : V_STR;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        int neg = c == '-';
        if (neg)
            j->i++;
        if (j->i >= j->n || !(j->s[j->i] >= '0' && j->s[j->i] <= '9')) {
            j->bad = 1;
            return V_BAD;
        }
        long long v = 0;
        if (j->s[j->i] == '0')
            j->i++;
        else
            while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9') {
                if (v < 1000000000000LL)
                    v = v * 10 + (j->s[j->i] - '0');
                j->i++;
            }
        int real = 0;
        if (j->i < j->n && j->s[j->i] == '.') {
            real = 1;
            j->i++;
            if (j->i >= j->n || !(j->s[j->i] >= '0' && j->s[j->i] <= '9')) {
                j->bad = 1;
                return V_BAD;
            }
            while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9')
                j->i++;
        }
        if (j->i < j->n && (j->s[j->i] == 'e' || j->s[j->i] == 'E')) {
            real = 1;
            j->i++;
            if (j->i < j->n && (j->s[j->i] == '+' || j->s[j->i] == '-'))
                j->i++;
            if (j->i >= j->n || !(j->s[j->i] >= '0' && j->s[j->i] <= '9')) {
                j->bad = 1;
                return V_BAD;
            }
            while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9')
                j->i++;
        }
        *num = neg ? -v : v;
        return real ? V_OTHER : V_INT;
    }
    jskip(j, depth);
    return j->bad ? V_BAD : V_OTHER;
}

static int word(struct json *j, const char *w) {
    size_t n = strlen(w);
    if (j->i + n <= j->n && memcmp(j->s + j->i, w, n) == 0) {
        j->i += n;
        return 1;
    }
    return 0;
}

static void jskip(struct json *j, int depth) {
    long long num;
    ws(j);
    if (j->i >= j->n) {
        j->bad = 1;
        return;
    }
    char c = j->s[j->i];
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->i++;
        ws(j);
        if (j->i < j->n && j->s[j->i] == close) {
            j->i++;
            return;
        }
        for (;;) {
            if (c == '{') {
                ws(j);
                jstring(j, NULL);
                ws(j);
                if (j->bad || j->i >= j->n || j->s[j->i++] != ':') {
                    j->bad = 1;
                    return;
                }
            }
            jvalue(j, &num, NULL, depth + 1);
            ws(j);
            if (j->bad || j->i >= j->n) {
                j->bad = 1;
                return;
            }
            if (j->s[j->i] == ',') {
                j->i++;
                continue;
            }
            if (j->s[j->i] == close) {
                j->i++;
                return;
            }
            j->bad = 1;
            return;
        }
    }
    if (word(j, "true") || word(j, "false") || word(j, "null"))
        return;
    j->bad = 1; /* NaN, Infinity and the rest are not JSON */
}

struct reply {
    char type[16];
    int has_code, has_signal, has_text, other_key;
    long long code, signal;
    enum vtype code_t, signal_t, text_t;
    struct buf text; /* command or reason */
};

/* One frame body as a reply; 0 if it is malformed (protocol._decode_body's errors). */
static int parse_reply(const char *body, size_t n, struct reply *r) {
    struct json j = {body, 0, n, 0};
    memset(r, 0, sizeof *r);
    /* the body must be UTF-8 (body.decode()) */
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t len = utf8_seq((const unsigned char *)body + i, n - i, &cp);
        if (!len)
            return 0;
        i += len;
    }
    if (n == 0 || body[0] != '{')
        return 0; /* not an object (no leading whitespace: the scanner starts at 0) */
    j.i = 1;
    ws(&j);
    int got_type = 0;
    if (j.i < n && body[j.i] == '}')
        j.i++;
    else
        for (;;) {
            struct buf key = {0};
            ws(&j);
            jstring(&j, &key);
            ws(&j);
            if (j.bad || j.i >= n || body[j.i++] != ':') {
                free(key.data);
                return 0;
            }
            long long num = 0;
            struct buf str = {0};
            enum vtype t = jvalue(&j, &num, &str, 1);
            if (t == V_BAD) {
                free(key.data);
                free(str.data);
                return 0;
            }
            reserve(&key, 1);
            key.data[key.len] = 0;
            if (strcmp(key.data, "type") == 0 && strlen(key.data) == key.len) {
                got_type = t == V_STR && str.len < sizeof r->type;
                if (got_type) {
                    memcpy(r->type, str.data, str.len);
                    r->type[str.len] = 0;
                } else
                    r->type[0] = 0;
            } else if (strcmp(key.data, "code") == 0 && strlen(key.data) == key.len) {
                r->has_code = 1, r->code = num, r->code_t = t;
            } else if (strcmp(key.data, "signal") == 0 && strlen(key.data) == key.len) {
                r->has_signal = 1, r->signal = num, r->signal_t = t;
            } else if ((strcmp(key.data, "command") == 0 || strcmp(key.data, "reason") == 0) &&
                       strlen(key.data) == key.len) {
                r->has_text = key.data[0] == 'c' ? 1 : 2;
                r->text_t = t;
                free(r->text.data);
                r->text = str;
                str.data = NULL;
            } else
                r->other_key = 1;
            free(key.data);
            free(str.data);
            ws(&j);
            if (j.i >= n) {
                return 0;
            }
            if (body[j.i] == ',') {
                j.i++;
                continue;
            }
            if (body[j.i] == '}') {
                j.i++;
                break;
            }
            return 0;
        }
    if (j.i != n || !got_type)
        return 0; /* extra data after the value; no type */
    return 1;
}

/* Bound the socket's next blocking call (connect, sendmsg, recvmsg) by what is left of the deadline, or
 * give up; after the command started, no bound. Signals interrupt a call with a timeout (EINTR, whatever
 * SA_RESTART says), and the loops around come back here. */
static void until_deadline(void) {
    struct timeval left = {0, 0};
    if (!command_started) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long ns = (long long)(deadline.tv_sec - now.tv_sec) * 1000000000LL;
        ns += deadline.tv_nsec - now.tv_nsec;
        if (ns <= 0)
            fail("the supervisor at %s did not start the command within %d s (is it stopped?)", socket_path,
                 ACCEPT_SECONDS);
        left.tv_sec = (time_t)(ns / 1000000000LL);
        left.tv_usec = (suseconds_t)(ns % 1000000000LL / 1000 + 1);
    }
    if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &left, sizeof left) < 0 ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &left, sizeof left) < 0)
        fail("supervisor unreachable at %s: %s", socket_path, strerror(errno));
}

static void receive_all(char *data, size_t n) {
    size_t got = 0;
    while (got < n) {
        char control[CMSG_SPACE(3 * sizeof(int))];
        struct iovec iov = {data + got, n - got};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        until_deadline();
        ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue; /* until_deadline says whether time is up */
            fail("protocol error: [Errno %d] %s", errno, strerror(errno));
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int *fds = (int *)CMSG_DATA(c);
                size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t k = 0; k < count; k++)
                    close(fds[k]); /* nothing is expected; taken and closed */
            }
        }
        if (r == 0)
            fail("the supervisor went away; the command was killed");
        got += (size_t)r;
    }
}

static int run(int argc, char **argv, int from_shim) {
    const char *path = getenv("NONO_SOCKET");
    if (!path || !*path)
        fail("NONO_SOCKET is not set; refusing to run unsandboxed");
    int stdio[3], nstdio = 0;
    struct stat st;
    for (int fd = 0; fd < 3; fd++)
        if (fstat(fd, &st) == 0)
            stdio[nstdio++] = fd;
    struct buf req = {0};
    reserve(&req, 4);
    req.len = 4;
    build_request(&req, argc, argv, from_shim, stdio, nstdio);
    size_t body = req.len - 4;
    if (body > MAX_FRAME)
        fail("the command is too large to send (%zu bytes; the frame limit is %u)", body, MAX_FRAME);
    req.data[0] = (char)(body >> 24);
    req.data[1] = (char)(body >> 16);
    req.data[2] = (char)(body >> 8);
    req.data[3] = (char)body;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ACCEPT_SECONDS;
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        fail("supervisor unreachable at %s: %s", path, strerror(errno));
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        fail("supervisor unreachable at %s: %s", path, strerror(ENAMETOOLONG));
    strcpy(addr.sun_path, path);
    socket_path = path;
    for (;;) { /* a full backlog makes connect wait, bounded by SO_SNDTIMEO */
        until_deadline();
        if (connect(sock, (struct sockaddr *)&addr, sizeof addr) == 0)
            break;
        if (errno != EINTR && errno != EAGAIN)
            fail("supervisor unreachable at %s: %s", path, strerror(errno));
    }
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        fail("supervisor unreachable at %s: %s", path, strerror(errno));
    if (cred.uid != getuid())
        fail("refusing supervisor at %s: it runs as uid %u, not %u", path, (unsigned)cred.uid, (unsigned)getuid());

    /* the request, with the stdio fds beside its first bytes */
    size_t off = 0;
    while (off < req.len) {
        struct iovec iov = {req.data + off, req.len - off};
        struct msghdr msg = {0};
        char control[CMSG_SPACE(3 * sizeof(int))];
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (off == 0 && nstdio) {
            memset(control, 0, sizeof control);
            msg.msg_control = control;
            msg.msg_controllen = CMSG_SPACE(nstdio * sizeof(int));
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(nstdio * sizeof(int));
            memcpy(CMSG_DATA(c), stdio, nstdio * sizeof(int));
        }
        until_deadline();
        ssize_t w = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fail("cannot send the command to the supervisor: %s", strerror(errno));
        }
        off += (size_t)w;
    }
    free(req.data);

    int running = 0; /* Conversation("client"): new -> (started) running -> (exited) done */
    for (;;) {
        unsigned char head[4];
        receive_all((char *)head, 4);
        uint32_t n = ((uint32_t)head[0] << 24) | ((uint32_t)head[1] << 16) | ((uint32_t)head[2] << 8) | head[3];
        if (n > MAX_FRAME)
            fail("protocol error: frame of %u bytes exceeds the %u-byte limit", n, MAX_FRAME);
        char *data = malloc(n ? n : 1);
        if (!data)
            fail("out of memory");
        receive_all(data, n);
        struct reply r;
        if (!parse_reply(data, n, &r))
            fail("protocol error: malformed frame");
        free(data);
        int started = strcmp(r.type, "started") == 0, exited = strcmp(r.type, "exited") == 0;
        int refused = strcmp(r.type, "refused") == 0;
        if (!started && !exited && !refused)
            fail("protocol error: malformed frame: unknown type");
        if (r.other_key || (started && (r.has_code || r.has_signal || r.has_text != 1)) ||
            (refused && (r.has_code || r.has_signal || r.has_text != 2)) || (exited && r.has_text))
            fail("protocol error: malformed frame: unexpected fields for %s", r.type);
        if ((started || refused) && r.text_t != V_STR)
            fail("protocol error: %s: %s must be a string", r.type, started ? "command" : "reason");
        if (exited) {
            if ((r.has_code && (r.code_t != V_INT || r.code < 0 || r.code > 255)))
                fail("protocol error: exited: code out of range");
            if ((r.has_signal && (r.signal_t != V_INT || r.signal < 0 || r.signal > 64)))
                fail("protocol error: exited: signal out of range");
        }
        if (started && !running) {
            running = 1;
            free(r.text.data);
            command_started = 1;
            until_deadline(); /* no bound from here on */
            continue;
        }
        if (refused) {
            reserve(&r.text, 1);
            r.text.data[r.text.len] = 0;
            fail("%s", r.text.data);
        }
        if (exited && running) {
            int signo = r.has_signal ? (int)r.signal : 0, code = r.has_code ? (int)r.code : 0;
            return signo ? 128 + signo : code;
        }
        fail("protocol error: unexpected %s message in state %s", r.type, running ? "running" : "new");
    }
}

static void install(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(signo, &sa, NULL);
}

int main(int argc, char **argv) {
    /* Until the command started, a signal ends this with 128+N (^C: 130), as the Python client does. */
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        install(forwarded[i]);
    /* `#!.../nono-shell-client` in a shim: the kernel runs `nono-shell-client SHIM ARGS...`; under any
     * other name (`nono-shell` on PATH, a link named `bash` to it) this is the shell itself. */
    int from_shim = strcmp(basename_of(argv[0]), CLIENT_NAME) == 0;
    if (from_shim) {
        if (argc < 2)
            fail("nono-shell-client is the shims' interpreter: run a shim, not this program");
        argc--;
        argv++;
    }
    /* `nono-shell --version`, as the only argument (CONTRACT.md); `bash --version` through a shim is the
     * real bash's, run in the sandbox like any command. */
    if (argc == 2 && strcmp(argv[1], "--version") == 0 && strcmp(basename_of(argv[0]), "nono-shell") == 0) {
        static const char line[] = "nono-shell " NONO_VERSION "\n";
        return write(1, line, sizeof line - 1) == (ssize_t)(sizeof line - 1) ? 0 : 1;
    }
    return run(argc, argv, from_shim);
}

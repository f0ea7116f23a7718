/*
 * The native launcher: the per-job supervisor of orchestrator/procs/launcher.py in C.
 *
 *     launcher LOG TAIL EXIT MAX_BYTES [GRACE_S] -- COMMAND...
 *
 * Same arguments, same files and the same behaviour as ``python -m
 * orchestrator.procs.launcher`` (read its docstring first); only its cost differs: a few
 * hundred kilobytes of memory per running job instead of a Python interpreter's
 * megabytes (decision 0026). orchestrator/procs/native.py builds it with the host's C
 * compiler on first use; the Python launcher stays the fallback and the reference, and
 * tests/integration/test_procs_job.py runs every test against both.
 *
 * Theory of operation. The launcher makes itself the job's child subreaper, blocks
 * SIGTERM and SIGCHLD and takes them from a signalfd, starts the command in its own
 * process group with stdout and stderr on a pipe, and then sleeps in poll(2) on the
 * pipe and the signalfd: output goes into the log (up to MAX_BYTES, then one line saying
 * so) and into a ring of the last TAIL_BYTES; a SIGCHLD reaps every exited child (the
 * command, and orphans re-parented to us); a SIGTERM means stop. When the command ended
 * or we were told to stop, the whole tree under us gets the one tree-kill of
 * orchestrator/procs/kill.py (SIGTERM, GRACE_S, then SIGSTOP and SIGKILL sweeps until
 * /proc shows no descendant), the rest of the output is drained, and only then are the
 * tail and the exit code written (each to a temporary name, then renamed). The tail
 * file is written only when the log does not hold the whole output (capped, a failed
 * write, or lines in it from before): otherwise the log's end is the tail, and a file
 * fewer is made per job (decision 0035).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The constants of launcher.py and kill.py, in milliseconds where they are times. */
#define TAIL_BYTES (256 * 1024)
#define READ_CHUNK_BYTES (64 * 1024)
#define KILL_POLL_MS 20
#define MAX_KILL_SWEEPS 200
#define KILL_SWEEP_PAUSE_MS 10
#define DRAIN_TIMEOUT_MS 5000
#define DEFAULT_GRACE_S 3.0
#define EXIT_CANNOT_START 127
#define EXIT_USAGE 2

static const char USAGE[] =
    "usage: launcher LOG TAIL EXIT MAX_BYTES [GRACE_S] -- COMMAND...\n";

/* Untouched pages cost nothing: the ring and the read buffer are resident only once a
 * job prints. */
static char tail_ring[TAIL_BYTES];
static size_t tail_start, tail_len;
static char chunk[READ_CHUNK_BYTES];

static int output_fd = -1; /* the read end of the command's stdout and stderr */
static int signal_fd = -1;
static int log_fd = -1;
static long long max_bytes, written;
static int log_whole = 1; /* the log holds all the output and nothing else */
static pid_t me, child = -1;
static int child_status, child_reaped, stop_requested;

static long long now_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static int write_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t done = write(fd, data, size);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return -1; /* a full disk loses log lines, never the job */
        }
        data += done;
        size -= (size_t)done;
    }
    return 0;
}

_Static_assert(READ_CHUNK_BYTES <= TAIL_BYTES, "a read fits in the tail ring");

static void keep_tail(const char *data, size_t size) {
    size_t end = (tail_start + tail_len) % TAIL_BYTES;
    size_t first = TAIL_BYTES - end < size ? TAIL_BYTES - end : size;
    memcpy(tail_ring + end, data, first);
    memcpy(tail_ring, data + first, size - first);
    if (tail_len + size <= TAIL_BYTES) {
        tail_len += size;
    } else {
        tail_start = (end + size) % TAIL_BYTES; /* the oldest byte left */
        tail_len = TAIL_BYTES;
    }
}

static void log_output(const char *data, size_t size) {
    keep_tail(data, size);
    if (written >= max_bytes) {
        log_whole = 0;
        return;
    }
    size_t room = (size_t)(max_bytes - written);
    size_t take = size < room ? size : room;
    if (write_all(log_fd, data, take) < 0 || take < size)
        log_whole = 0;
    written += (long long)take;
    if (written >= max_bytes) {
        log_whole = 0; /* the marker below is not output */
        char marker[64];
        int length = snprintf(marker, sizeof marker, "\n[orch: log capped at %lld bytes]\n",
                              max_bytes);
        write_all(log_fd, marker, (size_t)length);
    }
}

/* Collect every exited child of ours: the command (its status kept) and the orphans. */
static void reap_children(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == child) {
            child_status = status;
            child_reaped = 1;
        }
    }
}

/* One wait of at most timeout_ms (-1: until something happens) for output or a signal,
 * and what came handled. */
static void pump_once(int timeout_ms) {
    struct pollfd fds[2] = {{signal_fd, POLLIN, 0}, {output_fd, POLLIN, 0}};
    int count = output_fd >= 0 ? 2 : 1;
    if (poll(fds, (nfds_t)count, timeout_ms) <= 0)
        return;
    if (fds[0].revents & POLLIN) {
        struct signalfd_siginfo info;
        while (read(signal_fd, &info, sizeof info) == (ssize_t)sizeof info) {
            if (info.ssi_signo == SIGTERM)
                stop_requested = 1;
        }
        reap_children();
    }
    if (count == 2 && fds[1].revents) {
        ssize_t size = read(output_fd, chunk, sizeof chunk);
        if (size > 0) {
            log_output(chunk, (size_t)size);
        } else if (size == 0 || (errno != EINTR && errno != EAGAIN)) {
            close(output_fd); /* every writer is gone */
            output_fd = -1;
        }
    }
}

/* Handle output and signals for timeout_ms, however many come meanwhile. */
static void pump_for(int timeout_ms) {
    long long deadline = now_ms() + timeout_ms;
    long long left;
    while ((left = deadline - now_ms()) > 0)
        pump_once((int)left);
}

/* --- /proc: our living descendants (proc.py's descendants(), kill.py's living()) --- */

struct proc {
    pid_t pid, ppid;
    char living;
    signed char under_me; /* -1 unknown, 0 no, 1 yes */
};

static struct proc *table;
static size_t table_size, table_room;

static int by_pid(const void *left, const void *right) {
    pid_t a = ((const struct proc *)left)->pid, b = ((const struct proc *)right)->pid;
    return (a > b) - (a < b);
}

static struct proc *find(pid_t pid) {
    struct proc key = {.pid = pid};
    return bsearch(&key, table, table_size, sizeof *table, by_pid);
}

/* Read every /proc/<pid>/stat: "pid (comm) state ppid ...", comm may hold ") (". */
static void read_table(void) {
    table_size = 0;
    DIR *dir = opendir("/proc");
    if (dir == NULL)
        return;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end != '\0' || pid <= 0)
            continue;
        char path[64], text[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue; /* it exited while we looked */
        ssize_t size = read(fd, text, sizeof text - 1);
        close(fd);
        if (size <= 0)
            continue;
        text[size] = '\0';
        char *closing = strrchr(text, ')');
        char state;
        int ppid;
        if (closing == NULL || sscanf(closing + 1, " %c %d", &state, &ppid) != 2)
            continue;
        if (table_size == table_room) {
            size_t room = table_room ? table_room * 2 : 512;
            struct proc *grown = realloc(table, room * sizeof *table);
            if (grown == NULL)
                break;
            table = grown;
            table_room = room;
        }
        table[table_size++] = (struct proc){(pid_t)pid, (pid_t)ppid, state != 'Z' && state != 'X',
                                            -1};
    }
    closedir(dir);
    qsort(table, table_size, sizeof *table, by_pid);
}

static int is_under_me(struct proc *proc) {
    /* Up the parent links until us (yes), a root or an unknown pid (no), or a process
     * already decided; then the same walk again to remember the answer on the way. At
     * most table_size steps: a table read while processes change is not a tree. */
    int answer = 0;
    struct proc *step = proc;
    for (size_t steps = 0; step != NULL && steps <= table_size; steps++) {
        if (step->under_me >= 0) {
            answer = step->under_me;
            break;
        }
        if (step->ppid == me) {
            answer = 1;
            break;
        }
        step = step->ppid > 1 ? find(step->ppid) : NULL;
    }
    step = proc;
    for (size_t steps = 0; step != NULL && step->under_me < 0 && steps <= table_size; steps++) {
        step->under_me = (signed char)answer;
        step = step->ppid != me && step->ppid > 1 ? find(step->ppid) : NULL;
    }
    return answer;
}

/* Our living descendants into *found (a buffer reused between calls); their count. */
static size_t living_descendants(pid_t **found, size_t *room) {
    read_table();
    size_t count = 0;
    for (size_t i = 0; i < table_size; i++) {
        struct proc *proc = &table[i];
        if (proc->pid == me || !is_under_me(proc) || !proc->living)
            continue;
        if (count == *room) {
            size_t grown_room = *room ? *room * 2 : 64;
            pid_t *grown = realloc(*found, grown_room * sizeof **found);
            if (grown == NULL)
                break;
            *found = grown;
            *room = grown_room;
        }
        (*found)[count++] = proc->pid;
    }
    return count;
}

static int contains(const pid_t *pids, size_t count, pid_t pid) {
    for (size_t i = 0; i < count; i++)
        if (pids[i] == pid)
            return 1;
    return 0;
}

/* Whether we have no child at all, exited or not (waitid(2) with WNOWAIT changes
 * nothing). Then we have no descendant either, since every descendant's chain of
 * parents passes through a child of ours, and /proc need not be read: the common end of
 * a job, whose command started nothing that outlived it. */
static int childless(void) {
    siginfo_t info;
    return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) < 0 && errno == ECHILD;
}

/* kill.py's kill_tree(root=me, spare=(me,), grace_s): SIGTERM, the grace, SIGKILL. */
static void kill_tree(double grace_s) {
    pid_t *found = NULL, *termed = NULL;
    size_t found_room = 0, termed_count = 0, termed_room = 0;
    reap_children();
    if (childless())
        return;
    size_t count = living_descendants(&found, &found_room);
    if (count == 0)
        goto done;
    for (size_t i = 0; i < count; i++)
        kill(found[i], SIGTERM);
    termed = malloc(count * sizeof *termed);
    if (termed != NULL) {
        memcpy(termed, found, count * sizeof *termed);
        termed_count = termed_room = count;
    }
    long long deadline = now_ms() + (long long)(grace_s * 1000);
    while (now_ms() < deadline) {
        reap_children();
        count = living_descendants(&found, &found_room);
        if (count == 0)
            goto done;
        /* Started meanwhile: they get their SIGTERM too. */
        for (size_t i = 0; i < count; i++) {
            if (contains(termed, termed_count, found[i]))
                continue;
            kill(found[i], SIGTERM);
            if (termed_count == termed_room) {
                size_t room = termed_room ? termed_room * 2 : 64;
                pid_t *grown = realloc(termed, room * sizeof *termed);
                if (grown == NULL)
                    continue;
                termed = grown;
                termed_room = room;
            }
            termed[termed_count++] = found[i];
        }
        pump_for(KILL_POLL_MS);
    }
    /* Frozen, nothing forks and we stay the parent of what we kill. */
    for (int sweep = 0; sweep < MAX_KILL_SWEEPS; sweep++) {
        reap_children();
        count = living_descendants(&found, &found_room);
        if (count == 0)
            break;
        for (size_t i = 0; i < count; i++)
            kill(found[i], SIGSTOP);
        for (size_t i = 0; i < count; i++)
            kill(found[i], SIGKILL);
        pump_for(KILL_SWEEP_PAUSE_MS);
    }
done:
    free(found);
    free(termed);
}

static void write_atomic(const char *path, const char *data, size_t size) {
    size_t length = strlen(path);
    char *temporary = malloc(length + 5);
    if (temporary == NULL)
        return;
    memcpy(temporary, path, length);
    memcpy(temporary + length, ".tmp", 5);
    int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd >= 0) {
        write_all(fd, data, size);
        close(fd);
        rename(temporary, path);
    }
    free(temporary);
}

static void write_tail(const char *path) {
    char *data = malloc(tail_len ? tail_len : 1);
    if (data == NULL)
        return;
    size_t first = TAIL_BYTES - tail_start < tail_len ? TAIL_BYTES - tail_start : tail_len;
    memcpy(data, tail_ring + tail_start, first);
    memcpy(data + first, tail_ring, tail_len - first);
    write_atomic(path, data, tail_len);
    free(data);
}

static void write_exit(const char *path, int code) {
    char text[16];
    int length = snprintf(text, sizeof text, "%d", code);
    write_atomic(path, text, (size_t)length);
}

static int usage(void) {
    write_all(2, USAGE, sizeof USAGE - 1);
    return EXIT_USAGE;
}

/* The command could not be started: the log, the tail and the exit say so. */
static int cannot_start(const char *log, const char *tail, const char *exit_path,
                        const char *program, int error) {
    char message[4096];
    int length = snprintf(message, sizeof message, "[orch: cannot start '%s': %s]\n", program,
                          strerror(error));
    if (length < 0 || (size_t)length >= sizeof message)
        length = (int)sizeof message - 1;
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd >= 0) {
        write_all(fd, message, (size_t)length);
        close(fd);
    }
    write_atomic(tail, message, (size_t)length);
    write_exit(exit_path, EXIT_CANNOT_START);
    return EXIT_CANNOT_START;
}

int main(int argc, char **argv) {
    /* LOG TAIL EXIT MAX_BYTES [GRACE_S] -- COMMAND... (launcher.py's main()) */
    double grace_s = DEFAULT_GRACE_S;
    int command_at;
    if (argc >= 8 && strcmp(argv[5], "--") != 0 && strcmp(argv[6], "--") == 0) {
        char *end;
        grace_s = strtod(argv[5], &end);
        if (*end != '\0' || end == argv[5] || !(grace_s >= 0))
            return usage();
        if (grace_s > 1e9)
            grace_s = 1e9; /* "inf": a grace longer than any job */
        command_at = 7;
    } else if (argc >= 7 && strcmp(argv[5], "--") == 0) {
        command_at = 6;
    } else {
        return usage();
    }
    char *end;
    max_bytes = strtoll(argv[4], &end, 10);
    if (*end != '\0' || end == argv[4])
        return usage();
    const char *log = argv[1], *tail = argv[2], *exit_path = argv[3];
    char **command = argv + command_at;

    /* Descriptors 0-2 exist, so a pipe never lands on one of them. */
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0)
            open("/dev/null", O_RDWR);
    me = getpid();
    /* SIGTERM and SIGCHLD come through the signalfd; blocked, not ignored, so the
     * command, which gets our old mask back, has their default actions. */
    sigset_t handled, previous;
    sigemptyset(&handled);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGCHLD);
    sigprocmask(SIG_BLOCK, &handled, &previous);
    signal_fd = signalfd(-1, &handled, SFD_NONBLOCK | SFD_CLOEXEC);
    if (signal_fd < 0) {
        perror("launcher: signalfd");
        return EXIT_CANNOT_START;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); /* a kernel without it: the group kill */

    int output[2], exec_error[2];
    if (pipe2(output, O_CLOEXEC) < 0 || pipe2(exec_error, O_CLOEXEC) < 0)
        return cannot_start(log, tail, exit_path, command[0], errno);
    child = fork();
    if (child < 0)
        return cannot_start(log, tail, exit_path, command[0], errno);
    if (child == 0) {
        dup2(output[1], 1);
        dup2(output[1], 2);
        sigprocmask(SIG_SETMASK, &previous, NULL);
        execvp(command[0], command);
        int error = errno;
        write_all(exec_error[1], (const char *)&error, sizeof error);
        _exit(EXIT_CANNOT_START);
    }
    close(output[1]);
    close(exec_error[1]);
    int error;
    ssize_t got;
    do
        got = read(exec_error[0], &error, sizeof error);
    while (got < 0 && errno == EINTR);
    close(exec_error[0]);
    if (got == (ssize_t)sizeof error) {
        waitpid(child, NULL, 0);
        return cannot_start(log, tail, exit_path, command[0], error);
    }
    output_fd = output[0];
    log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (log_fd < 0 || lseek(log_fd, 0, SEEK_END) != 0)
        log_whole = 0;

    while (!child_reaped && !stop_requested)
        pump_once(-1);
    /* The command ended, or we were told to stop: nothing it started may stay. */
    kill_tree(grace_s);
    if (!child_reaped) {
        while (waitpid(child, &child_status, 0) < 0 && errno == EINTR)
            ;
        child_reaped = 1;
    }
    reap_children();
    /* Every writer of the pipe is dead now, so its end comes at once. */
    long long drain_deadline = now_ms() + DRAIN_TIMEOUT_MS;
    long long left;
    while (output_fd >= 0 && (left = drain_deadline - now_ms()) > 0)
        pump_once((int)left);
    int code = WIFSIGNALED(child_status) ? 128 + WTERMSIG(child_status)
                                         : WEXITSTATUS(child_status);
    if (!log_whole)
        write_tail(tail);
    write_exit(exit_path, code);
    return code;
}

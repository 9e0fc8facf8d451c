/* guest_ops: the file operations the engine benchmark times, run natively inside a guest
 * and, unchanged, on the host against /vmi: the same system calls on both sides.
 *
 *   guest_ops cat PATH N          N x (open, read to EOF, close); per-operation times
 *   guest_ops catgap PATH N MS    the same with MS milliseconds of quiet before each
 *   guest_ops ls DIR N            N x (opendir, readdir, lstat of every entry)
 *   guest_ops grep DIR N          N x a recursive read of every readable regular file
 *   guest_ops spin SECONDS        CPU-bound loop: iterations per second
 *   guest_ops every PATH MS SECONDS   cat PATH once every MS milliseconds
 *
 * Prints one JSON object: {"op": ..., "n": N, "median_us": ..., "p90_us": ..., ...}.
 * Built static by bench/engines.sh (the guest may have another libc). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static long read_whole(const char* path) {
    static char buf[65536];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    long total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) total += n;
    close(fd);
    return n < 0 ? -1 : total;
}

static long list_dir(const char* dir) {
    DIR* d = opendir(dir);
    if (d == NULL) return -1;
    long entries = 0;
    struct dirent* e;
    char path[4096];
    struct stat st;
    while ((e = readdir(d)) != NULL) {
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        lstat(path, &st);
        ++entries;
    }
    closedir(d);
    return entries;
}

static long files_read, bytes_read;

static void sweep(const char* dir) {
    DIR* d = opendir(dir);
    if (d == NULL) return;
    struct dirent* e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) < 0) continue;
        if (S_ISDIR(st.st_mode)) {
            sweep(path);
        } else if (S_ISREG(st.st_mode) && (st.st_mode & 0444)) {
            long n = read_whole(path);
            if (n >= 0) {
                ++files_read;
                bytes_read += n;
            }
        }
    }
    closedir(d);
}

static void report(const char* op, double* t, int n, long extra) {
    qsort(t, n, sizeof *t, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += t[i];
    printf("{\"op\": \"%s\", \"n\": %d, \"median_us\": %.1f, \"p90_us\": %.1f, \"min_us\": %.1f, "
           "\"mean_us\": %.1f, \"extra\": %ld}\n",
           op, n, t[n / 2], t[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1], t[0], sum / n, extra);
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: guest_ops cat|ls|grep PATH N | spin SECONDS | every PATH MS SECONDS\n");
        return 2;
    }
    const char* op = argv[1];
    if (strcmp(op, "spin") == 0) {
        double seconds = atof(argv[2]), start = now_us(), end = start + seconds * 1e6;
        volatile uint64_t x = 0;
        uint64_t iterations = 0;
        while (now_us() < end) {
            for (int i = 0; i < 100000; ++i) x += i;
            iterations += 100000;
        }
        printf("{\"op\": \"spin\", \"seconds\": %.3f, \"per_second\": %.0f}\n", seconds,
               iterations / ((now_us() - start) / 1e6));
        return 0;
    }
    if (strcmp(op, "every") == 0 && argc >= 5) {
        long ms = atol(argv[3]);
        double end = now_us() + atof(argv[4]) * 1e6;
        int n = 0, failed = 0;
        while (now_us() < end) {
            if (read_whole(argv[2]) < 0) ++failed;
            ++n;
            usleep(ms * 1000);
        }
        printf("{\"op\": \"every\", \"n\": %d, \"failed\": %d}\n", n, failed);
        return failed != 0;
    }
    int n = argc > 3 ? atoi(argv[3]) : 1;
    long gap_ms = strcmp(op, "catgap") == 0 && argc > 4 ? atol(argv[4]) : 0;
    if (n < 1) n = 1;
    double* t = calloc(n, sizeof *t);
    long extra = 0;
    for (int i = 0; i < n; ++i) {
        if (gap_ms > 0) usleep(gap_ms * 1000);
        double t0 = now_us();
        if (strcmp(op, "cat") == 0 || strcmp(op, "catgap") == 0) {
            extra = read_whole(argv[2]);
        } else if (strcmp(op, "ls") == 0) {
            extra = list_dir(argv[2]);
        } else if (strcmp(op, "grep") == 0) {
            files_read = bytes_read = 0;
            sweep(argv[2]);
            extra = files_read;
        } else {
            fprintf(stderr, "guest_ops: unknown operation %s\n", op);
            return 2;
        }
        t[i] = now_us() - t0;
        if (extra < 0) {
            fprintf(stderr, "guest_ops: %s %s failed\n", op, argv[2]);
            return 1;
        }
    }
    report(op, t, n, extra);
    return 0;
}

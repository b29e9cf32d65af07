/* The npy reader/writer (tools/npy.c) and the gdn command (tools/gdn.c):
 *  - npy round trips for every dtype and rank, version 1.0/2.0/3.0 headers
 *    written by hand in unusual but legal spellings;
 *  - every kind of malformed .npy file rejected with a message naming the
 *    file and the problem;
 *  - `gdn run --op state --backend cpu` end to end: its outputs must be
 *    bit-identical to calling gdn_chunk_state directly (batch, varlen with
 *    int64 cu_seqlens, kv layout, tiled heads, f32 inputs, no h0); with a
 *    GPU, `--backend cuda` likewise against a direct CUDA call;
 *  - `gdn run --op forward --backend cpu` likewise against gdn_chunk_forward
 *    (batch, varlen with every option flag, no h0), and its input and
 *    option errors;
 *  - `gdn run --op recurrent --backend cpu` likewise against
 *    gdn_recurrent_forward on a pool built from h0 (decode batch, varlen
 *    with an empty sequence and every option on a bf16 pool, no h0);
 *  - with a GPU, both ops with `--backend cuda` on the same files, within
 *    the two backends' error bounds of the CPU results;
 *  - usage and input errors exit 2 with a message. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "bf16.h"
#include "devbuf.h"
#include "gdn_ref.h"
#include "npy.h"
#include "test_util.h"

#ifndef GDN_CLI_PATH
#error "GDN_CLI_PATH must name the built gdn binary"
#endif

static char tmp_root[1024];

/* dir/name into out. */
static void path_in(char *out, size_t len, const char *dir, const char *name) {
    snprintf(out, len, "%s/%s", dir, name);
}

static void make_dir(const char *dir) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    if (system(cmd) != 0) {
        printf("FAIL: cannot create %s\n", dir);
        exit(1);
    }
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        printf("FAIL: cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static char *read_text(const char *path) {
    static char buf[65536];
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* ---- npy: round trips ---------------------------------------------------- */

static void fill_pattern(void *data, size_t nbytes, unsigned seed) {
    unsigned char *b = (unsigned char *)data;
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < nbytes; i++) {
        x = x * 1664525u + 1013904223u;
        b[i] = (unsigned char)(x >> 24);
    }
}

static void roundtrip(const char *dtype, int ndim, const int64_t *shape) {
    char path[4096], err[1024], sh[128];
    path_in(path, sizeof path, tmp_root, "rt.npy");
    npy_shape_str(ndim, shape, sh, sizeof sh);
    size_t item = npy_dtype_size(dtype), n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    void *data = gdn_test_alloc((int64_t)(n * item), 1);
    fill_pattern(data, n * item, (unsigned)(ndim * 7 + item));
    if (!CHECK(npy_write(path, dtype, ndim, shape, data, err, sizeof err) == 0,
               "npy_write %s %s: %s", dtype, sh, err)) {
        free(data);
        return;
    }
    npy_array a;
    if (CHECK(npy_read(path, &a, err, sizeof err) == 0, "npy_read %s %s: %s", dtype, sh, err)) {
        int same_shape = a.ndim == ndim;
        for (int i = 0; same_shape && i < ndim; i++) same_shape = a.shape[i] == shape[i];
        CHECK(strcmp(a.dtype, dtype) == 0, "dtype %s read back as %s", dtype, a.dtype);
        CHECK(same_shape, "shape %s read back differently (ndim %d)", sh, a.ndim);
        CHECK(a.count == (int64_t)n && a.nbytes == n * item && a.itemsize == item,
              "%s %s: count %lld nbytes %zu", dtype, sh, (long long)a.count, a.nbytes);
        CHECK(a.nbytes == n * item && (n == 0 || memcmp(a.data, data, n * item) == 0),
              "%s %s: data differs after a round trip", dtype, sh);
        npy_free(&a);
        CHECK(a.data == NULL, "npy_free leaves data");
    }
    /* The file itself: magic, version 1.0, data 64-byte aligned, '\n'. */
    FILE *f = fopen(path, "rb");
    unsigned char pre[10];
    if (CHECK(f && fread(pre, 1, 10, f) == 10, "cannot reread %s", path)) {
        size_t hlen = pre[8] | (size_t)pre[9] << 8;
        CHECK(memcmp(pre, "\x93NUMPY\x01\x00", 8) == 0, "magic/version of the written file");
        CHECK((10 + hlen) % 64 == 0, "header of %zu bytes: data not 64-byte aligned", hlen);
        char hdr[1024] = "";
        if (hlen < sizeof hdr && fread(hdr, 1, hlen, f) == hlen)
            CHECK(hdr[hlen - 1] == '\n', "header does not end with a newline");
    }
    if (f) fclose(f);
    free(data);
}

/* A file with the given version and raw header text (padded to 64). */
static void write_raw_npy(const char *path, int major, const char *dict, const void *data,
                          size_t nbytes) {
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64, hlen = total - pre;
    unsigned char *buf = gdn_test_alloc((int64_t)(total + nbytes), 1);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    if (major == 1) {
        buf[8] = (unsigned char)hlen;
        buf[9] = (unsigned char)(hlen >> 8);
    } else {
        for (int i = 0; i < 4; i++) buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    }
    memcpy(buf + pre, dict, dl);
    memset(buf + pre + dl, ' ', hlen - dl - 1);
    buf[total - 1] = '\n';
    if (nbytes) memcpy(buf + total, data, nbytes);
    write_bytes(path, buf, total + nbytes);
    free(buf);
}

static void test_npy_headers(void) {
    char path[4096], err[1024];
    path_in(path, sizeof path, tmp_root, "hdr.npy");
    float f[6] = {1, 2, 3, 4, 5, 6};
    static const struct {
        int major;
        const char *dict;
    } ok[] = {
        {2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"},
        {3, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"},
        {1, "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}"},
        {2, "{ \"shape\" :(2,3) ,\"descr\":\"<f4\",'fortran_order' :False }"},
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }"},
    };
    for (unsigned i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        write_raw_npy(path, ok[i].major, ok[i].dict, f, sizeof f);
        npy_array a;
        if (!CHECK(npy_read(path, &a, err, sizeof err) == 0, "header %u (v%d.0) rejected: %s", i,
                   ok[i].major, err))
            continue;
        CHECK(a.ndim == 2 && a.shape[0] == 2 && a.shape[1] == 3 && strcmp(a.dtype, "<f4") == 0 &&
                  memcmp(a.data, f, sizeof f) == 0,
              "header %u (v%d.0) read wrongly", i, ok[i].major);
        npy_free(&a);
    }
    /* Scalars and 1-D: "()" and "(6,)". */
    write_raw_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f, 4);
    npy_array a;
    if (CHECK(npy_read(path, &a, err, sizeof err) == 0, "scalar rejected: %s", err)) {
        CHECK(a.ndim == 0 && a.count == 1 && ((float *)a.data)[0] == 1.0f, "scalar read wrongly");
        npy_free(&a);
    }
    write_raw_npy(path, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), }", f,
                  sizeof f);
    if (CHECK(npy_read(path, &a, err, sizeof err) == 0, "1-D rejected: %s", err)) {
        CHECK(a.ndim == 1 && a.shape[0] == 6 && strcmp(a.dtype, "<i4") == 0, "1-D read wrongly");
        npy_free(&a);
    }
}

static void test_npy_int32(void) {
    char path[4096], err[1024];
    path_in(path, sizeof path, tmp_root, "i8.npy");
    const int64_t good[4] = {0, 5, -7, 2147483647};
    const int64_t shape[1] = {4};
    npy_array a;
    if (CHECK(npy_write(path, "<i8", 1, shape, good, err, sizeof err) == 0, "%s", err) &&
        CHECK(npy_read(path, &a, err, sizeof err) == 0, "%s", err)) {
        CHECK(npy_to_int32(&a, path, err, sizeof err) == 0, "npy_to_int32: %s", err);
        const int32_t *v = (const int32_t *)a.data;
        CHECK(strcmp(a.dtype, "<i4") == 0 && a.nbytes == 16 && v[0] == 0 && v[1] == 5 &&
                  v[2] == -7 && v[3] == 2147483647,
              "int64 -> int32 conversion wrong");
        npy_free(&a);
    }
    const int64_t bad[2] = {0, 4294967296LL};
    const int64_t shape2[1] = {2};
    if (CHECK(npy_write(path, "<i8", 1, shape2, bad, err, sizeof err) == 0, "%s", err) &&
        CHECK(npy_read(path, &a, err, sizeof err) == 0, "%s", err)) {
        CHECK(npy_to_int32(&a, path, err, sizeof err) != 0 && strstr(err, "int32") &&
                  strstr(err, path),
              "int64 out of int32 range accepted or unclear message: '%s'", err);
        npy_free(&a);
    }
}

/* ---- npy: malformed files ------------------------------------------------ */

typedef struct bad_file {
    const char *what;
    const char *expect; /* a substring of the message */
    int major;          /* 0: raw bytes below */
    const char *dict;
    size_t data_bytes;
    const char *raw;
    size_t raw_len;
} bad_file;

static void test_npy_malformed(void) {
    static const char big_header[] = "\x93NUMPY\x02\x00\xff\xff\xff\x7f{";
    static const char v1_trunc_header[] = "\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', ";
    static const bad_file cases[] = {
        {"bad magic", "magic", 0, NULL, 0, "\x93NUMPX\x01\x00\x10\x00", 10},
        {"empty file", "magic", 0, NULL, 0, "", 0},
        {"not npy at all", "magic", 0, NULL, 0, "hello world, not an array", 25},
        {"truncated preamble", "truncated", 0, NULL, 0, "\x93NUMPY\x01", 7},
        {"truncated v2 preamble", "truncated", 0, NULL, 0, "\x93NUMPY\x02\x00\x10", 9},
        {"truncated header", "truncated", 0, NULL, 0, v1_trunc_header,
         sizeof v1_trunc_header - 1},
        {"absurd header length", "header", 0, NULL, 0, big_header, sizeof big_header - 1},
        {"version 4.0", "version", 0, NULL, 0, "\x93NUMPY\x04\x00\x10\x00", 10},
        {"fortran order", "fortran_order", 1,
         "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, NULL, 0},
        {"unknown dtype", "unsupported dtype", 1,
         "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48, NULL, 0},
        {"unknown dtype u1", "unsupported dtype", 1,
         "{'descr': '|u1', 'fortran_order': False, 'shape': (6,), }", 6, NULL, 0},
        {"big-endian", "big-endian", 1,
         "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24, NULL, 0},
        {"structured dtype", "structured", 1,
         "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8, NULL, 0},
        {"truncated data", "truncated data", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20, NULL, 0},
        {"no data", "truncated data", 1,
         "{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }", 0, NULL, 0},
        {"extra data", "size mismatch", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 28, NULL, 0},
        {"too many dims", "too many dimensions", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 4, NULL, 0},
        {"missing shape", "missing the key 'shape'", 1, "{'descr': '<f4', 'fortran_order': False}",
         4, NULL, 0},
        {"unknown key", "unexpected key", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 4, NULL, 0},
        {"duplicate key", "twice", 1,
         "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 4, NULL, 0},
        {"not a dict", "dict", 1, "('<f4', False, (1,))", 4, NULL, 0},
        {"unclosed dict", "not closed", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), ", 4, NULL, 0},
        {"negative dim", "shape", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
         4, NULL, 0},
        {"bad fortran_order", "fortran_order", 1,
         "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", 4, NULL, 0},
        {"shape not a tuple", "shape", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': 3}",
         4, NULL, 0},
        {"dim overflow", "overflow", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 4, NULL,
         0},
        {"count overflow", "too large", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", 4, NULL,
         0},
        {"text after dict", "after the dict", 1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk", 4, NULL, 0},
    };
    char path[4096], err[1024];
    unsigned char zeros[64] = {0};
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_file *c = &cases[i];
        snprintf(path, sizeof path, "%s/bad_%02u.npy", tmp_root, i);
        if (c->major)
            write_raw_npy(path, c->major, c->dict, zeros, c->data_bytes);
        else
            write_bytes(path, c->raw, c->raw_len);
        npy_array a;
        memset(&a, 0x5a, sizeof a);
        int rc = npy_read(path, &a, err, sizeof err);
        CHECK(rc != 0, "%s: accepted", c->what);
        CHECK(a.data == NULL && a.ndim == 0, "%s: arr not left empty", c->what);
        CHECK(strstr(err, path) != NULL, "%s: message does not name the file: '%s'", c->what,
              err);
        CHECK(strstr(err, c->expect) != NULL, "%s: message lacks '%s': '%s'", c->what, c->expect,
              err);
        if (rc == 0) npy_free(&a);
    }
    /* Missing file, and a directory. */
    snprintf(path, sizeof path, "%s/no_such_file.npy", tmp_root);
    npy_array a;
    CHECK(npy_read(path, &a, err, sizeof err) != 0 && strstr(err, path) && strstr(err, "open"),
          "missing file: '%s'", err);
    CHECK(npy_read(tmp_root, &a, err, sizeof err) != 0 && strstr(err, "regular file"),
          "directory: '%s'", err);
    /* Writing: bad dtype and dims. */
    const int64_t shape[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    snprintf(path, sizeof path, "%s/w.npy", tmp_root);
    CHECK(npy_write(path, "<f8", 1, shape, zeros, err, sizeof err) != 0 && strstr(err, "dtype"),
          "write of <f8: '%s'", err);
    CHECK(npy_write(path, "<f4", 9, shape, zeros, err, sizeof err) != 0 && strstr(err, "ndim"),
          "write of 9 dims: '%s'", err);
}

/* ---- the gdn command ------------------------------------------------------ */

/* Run the gdn binary with args; stdout/stderr go to files in tmp_root.
 * Returns the exit code (-1 if it did not exit normally). */
static int gdn_cmd(const char *args) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s/stdout.txt' 2>'%s/stderr.txt'", GDN_CLI_PATH, args,
             tmp_root, tmp_root);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

static const char *gdn_stderr(void) {
    char path[4096];
    path_in(path, sizeof path, tmp_root, "stderr.txt");
    return read_text(path);
}

static const char *gdn_stdout(void) {
    char path[4096];
    path_in(path, sizeof path, tmp_root, "stdout.txt");
    return read_text(path);
}

/* A case of `gdn run`: the problem, and how its inputs are written. */
typedef struct cli_case {
    const char *name;
    int64_t B, T, Hk, Hv, K, V;
    const int32_t *cu;
    int64_t num_seqs;
    gdn_state_layout layout;
    gdn_head_map map;
    int with_h0;
    int cu_i8;       /* write cu_seqlens as <i8 */
    int bf16_as_f32; /* write the bf16 inputs (k, w, u; q, k, v) as <f4 */
} cli_case;

static int put(const char *dir, const char *name, const char *dtype, int ndim,
               const int64_t *shape, const void *data) {
    char path[4096], err[1024];
    path_in(path, sizeof path, dir, name);
    return CHECK(npy_write(path, dtype, ndim, shape, data, err, sizeof err) == 0, "%s", err);
}

static int put_bf16(const char *dir, const char *name, int as_f32, const int64_t *shape,
                    const gdn_bf16 *x) {
    if (!as_f32) return put(dir, name, "<u2", 4, shape, x);
    const int64_t n = shape[0] * shape[1] * shape[2] * shape[3];
    float *f = gdn_test_alloc(n, sizeof(float));
    for (int64_t i = 0; i < n; i++) f[i] = gdn_bf16_to_f32(x[i]);
    int ok = put(dir, name, "<f4", 4, shape, f);
    free(f);
    return ok;
}

/* The dims of n states of p: [n, Hv, V, K], or [n, Hv, K, V] with kv. */
static void state_dims(const gdn_problem *p, int64_t n, int64_t dims[4]) {
    const int kv = p->state_layout == GDN_STATE_KV;
    dims[0] = n;
    dims[1] = p->Hv;
    dims[2] = kv ? p->K : p->V;
    dims[3] = kv ? p->V : p->K;
}

/* Makes the case's inputs; 0 after a failed check. */
static int make_inputs(const cli_case *c, gdn_ref_inputs *in, uint64_t seed) {
    const gdn_problem shape = gdn_test_problem(c->B, c->T, c->Hk, c->Hv, c->K, c->V, c->layout,
                                               c->map, c->cu, c->num_seqs);
    return CHECK(gdn_ref_inputs_make(in, &shape, seed, c->with_h0) == 0,
                 "%s: inputs_make failed", c->name);
}

/* Writes the inputs every op reads alike into dir: h0.npy when the inputs
 * have one, cu_seqlens.npy when the case has one. */
static int put_h0_cu(const cli_case *c, const char *dir, const gdn_ref_inputs *in) {
    int64_t hs[4];
    state_dims(&in->p, in->N, hs);
    int ok = !in->h0 || put(dir, "h0.npy", "<f4", 4, hs, in->h0);
    if (ok && c->cu) {
        const int64_t cs[] = {c->num_seqs + 1};
        if (c->cu_i8) {
            int64_t cu8[64];
            for (int64_t i = 0; i <= c->num_seqs; i++) cu8[i] = c->cu[i];
            ok = put(dir, "cu_seqlens.npy", "<i8", 1, cs, cu8);
        } else {
            ok = put(dir, "cu_seqlens.npy", "<i4", 1, cs, c->cu);
        }
    }
    return ok;
}

/* Writes the case's inputs of --op state into dir; returns the made inputs. */
static int write_inputs(const cli_case *c, const char *dir, gdn_ref_inputs *in, uint64_t seed) {
    if (!make_inputs(c, in, seed)) return 0;
    const gdn_problem *p = &in->p;
    make_dir(dir);
    const int64_t ks[] = {p->B, p->T, p->Hk, p->K}, ws[] = {p->B, p->T, p->Hv, p->K},
                  us[] = {p->B, p->T, p->Hv, p->V}, gs[] = {p->B, p->T, p->Hv};
    return put_bf16(dir, "k.npy", c->bf16_as_f32, ks, in->k) &&
           put_bf16(dir, "w.npy", c->bf16_as_f32, ws, in->w) &&
           put_bf16(dir, "u.npy", c->bf16_as_f32, us, in->u) &&
           put(dir, "g_cumsum.npy", "<f4", 3, gs, in->g_cumsum) && put_h0_cu(c, dir, in);
}

/* Read dir/name and compare its bytes with want (nbytes) and its shape;
 * what names the case in messages. */
static void expect_file(const char *what, const char *dir, const char *name, const char *dtype,
                        int ndim, const int64_t *shape, const void *want, size_t nbytes) {
    npy_array a;
    if (gdn_test_load_npy(dir, name, dtype, ndim, shape, &a) != 0) {
        CHECK(0, "%s: %s missing or of the wrong dtype/shape", what, name);
        return;
    }
    CHECK(a.nbytes == nbytes && memcmp(a.data, want, nbytes) == 0,
          "%s: %s differs from gdn_chunk_state called directly", what, name);
    npy_free(&a);
}

/* "run --op OP --backend BACKEND --in 'IN' --out 'OUT'", p's state layout
 * and head map, then extra (more options) into args. */
static void run_args(char *args, size_t len, const char *op, const char *backend,
                     const char *in_dir, const char *out_dir, const gdn_problem *p,
                     const char *extra) {
    snprintf(args, len,
             "run --op %s --backend %s --in '%s' --out '%s' --state-layout %s --head-map=%s %s",
             op, backend, in_dir, out_dir, p->state_layout == GDN_STATE_KV ? "kv" : "vk",
             p->head_map == GDN_HEAD_MAP_TILED ? "tiled" : "block", extra);
}

/* Runs gdn with args: a counted check that it exited 0. */
static int run_ok(const char *what, const char *args) {
    int rc = gdn_cmd(args);
    return CHECK(rc == 0, "%s: gdn run exited %d: %s", what, rc, gdn_stderr());
}

/* gdn_chunk_state on the CUDA backend through device copies; 1 on success. */
static int direct_cuda(const gdn_ref_inputs *in, gdn_bf16 *h, size_t hb, gdn_bf16 *v, size_t vb,
                       float *f, size_t fb) {
    const gdn_problem *p = &in->p;
    const int64_t tok = p->B * p->T;
    const void *host[] = {in->k, in->w, in->u, in->g_cumsum, in->h0, in->cu_seqlens,
                          NULL, NULL, NULL, NULL};
    size_t bytes[] = {(size_t)(tok * p->Hk * p->K) * 2, (size_t)(tok * p->Hv * p->K) * 2,
                      (size_t)(tok * p->Hv * p->V) * 2, (size_t)(tok * p->Hv) * 4, fb,
                      (size_t)(in->N + 1) * 4, hb, vb, fb, 0};
    enum { K_, W_, U_, G_, H0_, CU_, H_, V_, F_, WS_, COUNT_ };
    void *d[COUNT_] = {0};
    gdn_context *ctx = NULL;
    int ok = CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CUDA, 0), GDN_SUCCESS, NULL) &&
             CHECK_STATUS(gdn_chunk_state_workspace_size(ctx, p, &bytes[WS_]), GDN_SUCCESS, ctx);
    for (int i = 0; ok && i < COUNT_; i++) {
        if ((i == H0_ && !in->h0) || (i == CU_ && !in->cu_seqlens) || (i == WS_ && !bytes[i]))
            continue;
        ok = CHECK(gdn_dev_alloc(&d[i], bytes[i]) == 0 &&
                       (!host[i] || gdn_dev_upload(d[i], host[i], bytes[i]) == 0),
                   "device buffer: %s", gdn_dev_error());
    }
    if (ok) {
        gdn_problem pd = *p;
        pd.cu_seqlens_device = (const int32_t *)d[CU_];
        ok = CHECK_STATUS(gdn_chunk_state(ctx, &pd, d[K_], d[W_], d[U_], d[G_], d[H0_], d[H_],
                                          d[V_], d[F_], d[WS_], bytes[WS_]),
                          GDN_SUCCESS, ctx) &&
             CHECK(gdn_dev_sync() == 0 && gdn_dev_download(h, d[H_], hb) == 0 &&
                       gdn_dev_download(v, d[V_], vb) == 0 && gdn_dev_download(f, d[F_], fb) == 0,
                   "after the CUDA call: %s", gdn_dev_error());
    }
    for (int i = 0; i < COUNT_; i++) gdn_dev_free(d[i]);
    gdn_context_destroy(ctx);
    return ok;
}

/* Run the CLI on in_dir with backend and compare its files with h, v, f. */
static void cli_vs_direct(const cli_case *c, const gdn_ref_inputs *in, const char *backend,
                          const char *in_dir, const char *out_dir, const gdn_bf16 *h, size_t hb,
                          const gdn_bf16 *v, size_t vb, const float *f, size_t fb) {
    const gdn_problem *p = &in->p;
    char args[12288], what[256];
    snprintf(what, sizeof what, "%s (%s)", c->name, backend);
    run_args(args, sizeof args, "state", backend, in_dir, out_dir, p, "");
    if (!run_ok(what, args)) return;
    const int kv = p->state_layout == GDN_STATE_KV;
    const int64_t s1 = kv ? p->K : p->V, s2 = kv ? p->V : p->K;
    if (!p->cu_seqlens && p->B > 1) {
        const int64_t hs[] = {p->B, in->NT / p->B, p->Hv, s1, s2};
        expect_file(what, out_dir, "h.npy", "<u2", 5, hs, h, hb);
    } else {
        const int64_t hs[] = {in->NT, p->Hv, s1, s2};
        expect_file(what, out_dir, "h.npy", "<u2", 4, hs, h, hb);
    }
    const int64_t vs[] = {p->B, p->T, p->Hv, p->V}, fs[] = {in->N, p->Hv, s1, s2};
    expect_file(what, out_dir, "v_new.npy", "<u2", 4, vs, v, vb);
    expect_file(what, out_dir, "final_state.npy", "<f4", 4, fs, f, fb);
    CHECK(strstr(gdn_stdout(), "h.npy") != NULL, "%s: no summary on stdout", what);
}

static void test_run_case(const cli_case *c, uint64_t seed) {
    char in_dir[2048], out_dir[2048];
    snprintf(in_dir, sizeof in_dir, "%s/%s_in", tmp_root, c->name);
    snprintf(out_dir, sizeof out_dir, "%s/%s_out/nested", tmp_root, c->name); /* created */
    gdn_ref_inputs in;
    if (!write_inputs(c, in_dir, &in, seed)) return;
    const gdn_problem *p = &in.p;

    /* The direct call. */
    gdn_context *ctx = NULL;
    if (!CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL)) {
        gdn_ref_inputs_free(&in);
        return;
    }
    const int64_t state = p->Hv * p->K * p->V;
    const size_t hb = (size_t)(in.NT * state) * 2, vb = (size_t)(p->B * p->T * p->Hv * p->V) * 2,
                 fb = (size_t)(in.N * state) * 4;
    gdn_bf16 *h = gdn_test_alloc((int64_t)hb, 1), *v = gdn_test_alloc((int64_t)vb, 1);
    float *f = gdn_test_alloc((int64_t)fb, 1);
    if (CHECK_STATUS(gdn_chunk_state(ctx, p, in.k, in.w, in.u, in.g_cumsum, in.h0, h, v, f, NULL,
                                     0),
                     GDN_SUCCESS, ctx))
        cli_vs_direct(c, &in, "cpu", in_dir, out_dir, h, hb, v, vb, f, fb);
    gdn_context_destroy(ctx);

    if (gdn_dev_available()) {
        snprintf(out_dir, sizeof out_dir, "%s/%s_out_cuda", tmp_root, c->name);
        if (direct_cuda(&in, h, hb, v, vb, f, fb))
            cli_vs_direct(c, &in, "cuda", in_dir, out_dir, h, hb, v, vb, f, fb);
    }
    free(h);
    free(v);
    free(f);
    gdn_ref_inputs_free(&in);
}

static void test_run(void) {
    static const int32_t cu[] = {0, 50, 50, 180, 200};
    static const int32_t cu1[] = {0, 64};
    const cli_case cases[] = {
        /* batch, ragged T, h0: h.npy is [B, ceil(T/64), Hv, V, K] */
        {"batch", 2, 100, 2, 4, 32, 48, NULL, 0, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 0, 0},
        /* varlen with an empty sequence, int64 cu_seqlens, kv, tiled */
        {"varlen_kv", 1, 200, 2, 6, 40, 24, cu, 4, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, 1, 0},
        /* varlen, int32 cu_seqlens, no h0, f32 inputs */
        {"varlen_f32", 1, 200, 1, 2, 16, 16, cu, 4, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0, 1},
        /* single sequence, one exact chunk, through cu_seqlens */
        {"one_chunk", 1, 64, 1, 1, 8, 8, cu1, 1, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 0, 0},
        /* B = 1 without cu_seqlens: h.npy is [NT, Hv, V, K] */
        {"single", 1, 130, 3, 3, 64, 32, NULL, 0, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, 0, 0},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) test_run_case(&cases[i], 100 + i);
}

/* Expect exit code 2 and each of the substrings in stderr. */
static void expect_usage_error(const char *what, const char *args, const char *s1,
                               const char *s2) {
    int rc = gdn_cmd(args);
    const char *err = gdn_stderr();
    CHECK(rc == 2, "%s: exit code %d, expected 2 (stderr: %s)", what, rc, err);
    CHECK(strstr(err, s1) != NULL, "%s: stderr lacks '%s': %s", what, s1, err);
    if (s2) CHECK(strstr(err, s2) != NULL, "%s: stderr lacks '%s': %s", what, s2, err);
}

static void test_errors(void) {
    char dir[2048], empty[2048], args[12288], path[4096], err[1024];
    snprintf(dir, sizeof dir, "%s/err_in", tmp_root);
    snprintf(empty, sizeof empty, "%s/empty_in", tmp_root);
    make_dir(empty);
    const cli_case c = {"err", 1, 96, 2, 4, 16, 16, NULL, 0, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK,
                        1, 0, 0};
    gdn_ref_inputs in;
    if (!write_inputs(&c, dir, &in, 7)) return;

    CHECK(gdn_cmd("--help") == 0 && strstr(gdn_stdout(), "gdn run"), "gdn --help");
    CHECK(gdn_cmd("help") == 0 && strstr(gdn_stdout(), "gdn demo"), "gdn help");
    CHECK(gdn_cmd("run --help") == 0 && strstr(gdn_stdout(), "--state-layout"), "gdn run --help");
    CHECK(gdn_cmd("version") == 0 && strstr(gdn_stdout(), "libgdn"), "gdn version");
    expect_usage_error("no command", "", "no command", NULL);
    expect_usage_error("unknown command", "frobnicate", "unknown command", "frobnicate");
    expect_usage_error("unknown flag", "run --op state --frob 1", "unknown option", "--frob");
    expect_usage_error("missing value", "run --op", "--op", "needs a value");
    expect_usage_error("missing --op", "run --in x --out y", "missing --op", NULL);
    expect_usage_error("bad op", "run --op output --in x --out y", "unknown --op", NULL);
    expect_usage_error("bad backend", "run --op state --in x --out y --backend tpu", "--backend",
                       "tpu");
    expect_usage_error("bad layout", "run --op state --in x --out y --state-layout xy",
                       "--state-layout", NULL);
    expect_usage_error("bad device", "run --op state --in x --out y --device abc", "--device",
                       "not an integer");
    expect_usage_error("demo bad T", "demo --T 0", "--T", "out of range");
    expect_usage_error("stray argument", "run extra", "unexpected argument", "extra");
    /* A small demo on the CPU passes; the GPU without a GPU fails with exit 1. */
    int rc = gdn_cmd("demo --backend cpu --T 200 --Hk 1 --Hv 2 --K 32 --V 16 --seed 3");
    CHECK(rc == 0 && strstr(gdn_stdout(), "PASS") && strstr(gdn_stdout(), "T=200"),
          "gdn demo --backend cpu: exit %d: %s%s", rc, gdn_stdout(), gdn_stderr());
    if (!gdn_dev_available()) {
        rc = gdn_cmd("demo --backend cuda");
        CHECK(rc == 1 && strstr(gdn_stderr(), "CUDA backend is not available"),
              "gdn demo --backend cuda without a GPU: exit %d: %s", rc, gdn_stderr());
    }

    const char *base = "run --op state --backend cpu --in";
    snprintf(args, sizeof args, "%s '%s' --out '%s/o'", base, empty, tmp_root);
    expect_usage_error("missing k.npy", args, "k.npy", "open");

    /* w with the wrong T. */
    const gdn_problem *p = &in.p;
    const int64_t bad_w[] = {p->B, p->T - 1, p->Hv, p->K};
    put(dir, "w.npy", "<u2", 4, bad_w, in.w);
    snprintf(args, sizeof args, "%s '%s' --out '%s/o'", base, dir, tmp_root);
    expect_usage_error("w/k mismatch", args, "w.npy", "does not match");
    /* w with 3 dims. */
    put(dir, "w.npy", "<u2", 3, bad_w, in.w);
    expect_usage_error("w ndim", args, "w.npy", "dims");
    /* w with Hv not a multiple of Hk. */
    const int64_t odd_w[] = {p->B, p->T, 3, p->K};
    put(dir, "w.npy", "<u2", 4, odd_w, in.w);
    expect_usage_error("Hv % Hk", args, "w.npy", "multiple");
    const int64_t ws[] = {p->B, p->T, p->Hv, p->K};
    put(dir, "w.npy", "<u2", 4, ws, in.w);
    /* g_cumsum as bf16. */
    const int64_t gs[] = {p->B, p->T, p->Hv};
    put(dir, "g_cumsum.npy", "<u2", 3, gs, in.k);
    expect_usage_error("g dtype", args, "g_cumsum.npy", "<f4");
    put(dir, "g_cumsum.npy", "<f4", 3, gs, in.g_cumsum);
    /* u as int32. */
    const int64_t us[] = {p->B, p->T, p->Hv, p->V};
    path_in(path, sizeof path, dir, "u.npy");
    int32_t *ui = gdn_test_alloc(us[0] * us[1] * us[2] * us[3], 4);
    memset(ui, 0, (size_t)(us[0] * us[1] * us[2] * us[3]) * 4);
    CHECK(npy_write(path, "<i4", 4, us, ui, err, sizeof err) == 0, "%s", err);
    free(ui);
    expect_usage_error("u dtype", args, "u.npy", "dtype");
    put(dir, "u.npy", "<u2", 4, us, in.u);
    /* h0 in the other layout's shape (V != K would be needed: use kv). */
    snprintf(args, sizeof args, "%s '%s' --out '%s/o' --state-layout kv", base, dir, tmp_root);
    const int64_t h0_wrong[] = {1, p->Hv, p->V, p->K + 1};
    float *hz = gdn_test_alloc(h0_wrong[1] * h0_wrong[2] * h0_wrong[3], 4);
    memset(hz, 0, (size_t)(h0_wrong[1] * h0_wrong[2] * h0_wrong[3]) * 4);
    put(dir, "h0.npy", "<f4", 4, h0_wrong, hz);
    free(hz);
    expect_usage_error("h0 shape", args, "h0.npy", "state layout kv");
    const int64_t h0s[] = {1, p->Hv, p->V, p->K};
    put(dir, "h0.npy", "<f4", 4, h0s, in.h0);
    /* cu_seqlens not ending at T, then decreasing, then as float. */
    snprintf(args, sizeof args, "%s '%s' --out '%s/o'", base, dir, tmp_root);
    const int32_t cu_bad[] = {0, 40, 90};
    const int64_t cs[] = {3};
    put(dir, "cu_seqlens.npy", "<i4", 1, cs, cu_bad);
    expect_usage_error("cu end", args, "cu_seqlens.npy", "must equal T");
    const int32_t cu_dec[] = {0, 60, 50, 96};
    const int64_t cs4[] = {4};
    put(dir, "cu_seqlens.npy", "<i4", 1, cs4, cu_dec);
    expect_usage_error("cu decreasing", args, "cu_seqlens.npy", "non-decreasing");
    const float cu_f[] = {0, 96};
    const int64_t cs2[] = {2};
    put(dir, "cu_seqlens.npy", "<f4", 1, cs2, cu_f);
    expect_usage_error("cu dtype", args, "cu_seqlens.npy", "<i4");
    const int64_t cu_big[] = {0, 1LL << 40};
    put(dir, "cu_seqlens.npy", "<i8", 1, cs2, cu_big);
    expect_usage_error("cu int32 range", args, "cu_seqlens.npy", "int32");
    /* cu_seqlens with N = 2 but h0 for 1 sequence. */
    const int32_t cu_two[] = {0, 40, 96};
    put(dir, "cu_seqlens.npy", "<i4", 1, cs, cu_two);
    expect_usage_error("h0 vs cu", args, "h0.npy", "N=2");
    /* A corrupt k.npy: the npy message comes through. */
    path_in(path, sizeof path, dir, "k.npy");
    write_bytes(path, "garbage", 7);
    expect_usage_error("corrupt k", args, "k.npy", "magic");
    gdn_ref_inputs_free(&in);
}

/* ---- gdn run --op forward -------------------------------------------------- */

typedef struct fwd_cli_case {
    cli_case base;     /* the problem; bf16_as_f32 writes q, k, v as <f4 */
    const char *flags; /* option flags, also applied to the direct call */
    float scale;
    int l2norm, sigmoid, qwen;
} fwd_cli_case;

/* Makes the case's inputs and options into *fi and writes them into dir. */
static int write_forward_inputs(const fwd_cli_case *fc, const char *dir, uint64_t seed,
                                gdn_test_fw_inputs *fi) {
    const cli_case *c = &fc->base;
    gdn_ref_inputs *in = &fi->in;
    gdn_forward_options *opts = &fi->opts;
    fi->A_log = fi->dt_bias = NULL;
    if (!make_inputs(c, in, seed)) return 0;
    const gdn_problem *p = &in->p;
    gdn_forward_options_init(opts);
    opts->scale = fc->scale;
    opts->l2norm_qk = fc->l2norm;
    opts->beta_sigmoid = fc->sigmoid;
    opts->qwen_gate = fc->qwen;
    if (fc->qwen) {
        fi->A_log = gdn_test_alloc(p->Hv, sizeof(float));
        fi->dt_bias = gdn_test_alloc(p->Hv, sizeof(float));
        for (int64_t h = 0; h < p->Hv; h++) {
            fi->A_log[h] = -1.5f + 0.25f * (float)h;
            fi->dt_bias[h] = 0.3f - 0.1f * (float)h;
        }
        /* g as raw a: some positive, some negative */
        for (int64_t x = 0; x < p->B * p->T * p->Hv; x++) in->g[x] = in->g[x] * 8.0f + 0.7f;
        opts->A_log = fi->A_log;
        opts->dt_bias = fi->dt_bias;
    }
    if (fc->sigmoid)
        for (int64_t x = 0; x < p->B * p->T * p->Hv; x++) in->beta[x] = 4.0f * in->beta[x] - 2.5f;
    make_dir(dir);
    const int64_t qs[] = {p->B, p->T, p->Hk, p->K}, vs[] = {p->B, p->T, p->Hv, p->V},
                  gs[] = {p->B, p->T, p->Hv}, hv[] = {p->Hv};
    int ok = put_bf16(dir, "q.npy", c->bf16_as_f32, qs, in->q) &&
             put_bf16(dir, "k.npy", c->bf16_as_f32, qs, in->k) &&
             put_bf16(dir, "v.npy", c->bf16_as_f32, vs, in->v) &&
             put(dir, "g.npy", "<f4", 3, gs, in->g) && put(dir, "beta.npy", "<f4", 3, gs, in->beta);
    if (ok && fc->qwen)
        ok = put(dir, "A_log.npy", "<f4", 1, hv, fi->A_log) &&
             put(dir, "dt_bias.npy", "<f4", 1, hv, fi->dt_bias);
    return ok && put_h0_cu(c, dir, in);
}

/* Relative Frobenius difference |x - y| / |y|. */
static double rel_diff_bf16(const gdn_bf16 *x, const gdn_bf16 *y, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double a = gdn_bf16_to_f32(x[i]), b = gdn_bf16_to_f32(y[i]);
        num += (a - b) * (a - b);
        den += b * b;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static double rel_diff_f32(const float *x, const float *y, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* After a direct call gave o and f on the inputs in in_dir: `gdn run --op
 * OP --backend cpu` with the case's flags (and extra options before them)
 * must write the same o.npy and final_state.npy into out_dir. */
static void forward_cli_vs_direct(const fwd_cli_case *fc, const char *op, const char *extra,
                                  const gdn_ref_inputs *in, const char *in_dir,
                                  const char *out_dir, const gdn_bf16 *o, size_t ob,
                                  const float *f, size_t fb) {
    const cli_case *c = &fc->base;
    const gdn_problem *p = &in->p;
    char args[12288], options[1024], what[256], summary[64];
    snprintf(what, sizeof what, "%s %s", op, c->name);
    snprintf(options, sizeof options, "%s%s", extra, fc->flags);
    run_args(args, sizeof args, op, "cpu", in_dir, out_dir, p, options);
    if (run_ok(what, args)) {
        const int64_t os[] = {p->B, p->T, p->Hv, p->V};
        int64_t fs[4];
        state_dims(p, in->N, fs);
        expect_file(c->name, out_dir, "o.npy", "<u2", 4, os, o, ob);
        expect_file(c->name, out_dir, "final_state.npy", "<f4", 4, fs, f, fb);
        snprintf(summary, sizeof summary, "--op %s", op);
        CHECK(strstr(gdn_stdout(), summary) && strstr(gdn_stdout(), "o.npy"),
              "%s: no summary on stdout", what);
    }
    if (gdn_dev_available()) {
        /* --backend cuda: the same files, within both backends' error
         * bounds of the CPU results (each is within 4e-3 of the oracle) */
        char cdir[4096];
        snprintf(cdir, sizeof cdir, "%s/c", out_dir);
        run_args(args, sizeof args, op, "cuda", in_dir, cdir, p, options);
        if (run_ok(what, args)) {
            const int64_t os[] = {p->B, p->T, p->Hv, p->V};
            int64_t fs[4];
            state_dims(p, in->N, fs);
            npy_array a, b;
            if (CHECK(gdn_test_load_npy(cdir, "o.npy", "<u2", 4, os, &a) == 0 &&
                          gdn_test_load_npy(cdir, "final_state.npy", "<f4", 4, fs, &b) == 0,
                      "%s --backend cuda: outputs missing or misshapen", what)) {
                const double eo = rel_diff_bf16((const gdn_bf16 *)a.data, o, (int64_t)(ob / 2));
                const double ef = rel_diff_f32((const float *)b.data, f, (int64_t)(fb / 4));
                CHECK(eo <= 8e-3 && ef <= 7e-3,
                      "%s --backend cuda vs cpu: o %.2e, final_state %.2e (bounds 8e-3, 7e-3)",
                      what, eo, ef);
                npy_free(&a);
                npy_free(&b);
            }
        }
    }
}

/* gdn_chunk_forward on the case's inputs into o and f; 1 on success. */
static int direct_forward(gdn_context *ctx, const gdn_test_fw_inputs *fi, gdn_bf16 *o, float *f) {
    const gdn_ref_inputs *in = &fi->in;
    return CHECK_STATUS(gdn_chunk_forward(ctx, &in->p, &fi->opts, in->q, in->k, in->v, in->g,
                                          in->beta, in->h0, o, f, NULL, NULL, 0),
                        GDN_SUCCESS, ctx);
}

/* gdn_recurrent_forward on the case's inputs into o, on a pool of pool_dtype
 * built as `gdn run --op recurrent` builds it (h0 or zeros, sequence n in
 * slot n); f is the pool afterwards, as f32. 1 on success. */
static int direct_recurrent(gdn_context *ctx, const gdn_test_fw_inputs *fi, gdn_dtype pool_dtype,
                            gdn_bf16 *o, float *f) {
    const gdn_ref_inputs *in = &fi->in;
    const gdn_problem *p = &in->p;
    const int64_t n = in->N * p->Hv * p->V * p->K;
    float *pf = gdn_test_alloc(n, 4);
    gdn_bf16 *pb = gdn_test_alloc(n, 2);
    for (int64_t x = 0; x < n; x++) {
        pf[x] = in->h0 ? in->h0[x] : 0.0f;
        pb[x] = gdn_f32_to_bf16(pf[x]);
    }
    void *pool = pool_dtype == GDN_DTYPE_F32 ? (void *)pf : (void *)pb;
    const int ok = CHECK_STATUS(gdn_recurrent_forward(ctx, p, &fi->opts, in->q, in->k, in->v,
                                                      in->g, in->beta, pool, pool_dtype, in->N,
                                                      NULL, o, NULL),
                                GDN_SUCCESS, ctx);
    if (ok)
        for (int64_t x = 0; x < n; x++)
            f[x] = pool_dtype == GDN_DTYPE_F32 ? pf[x] : gdn_bf16_to_f32(pb[x]);
    free(pf);
    free(pb);
    return ok;
}

/* `gdn run --op OP` (forward, or recurrent on a pool of pool_dtype) on the
 * case's inputs against the op called directly on the CPU: o.npy and
 * final_state.npy bit-identical. */
static void test_forward_case(const fwd_cli_case *fc, const char *op, gdn_dtype pool_dtype,
                              uint64_t seed) {
    const int recurrent = strcmp(op, "recurrent") == 0;
    const char *prefix = recurrent ? "rec" : "fwd", *name = fc->base.name;
    char in_dir[2048], out_dir[2048];
    snprintf(in_dir, sizeof in_dir, "%s/%s_%s_in", tmp_root, prefix, name);
    snprintf(out_dir, sizeof out_dir, "%s/%s_%s_out/nested", tmp_root, prefix, name);
    gdn_test_fw_inputs fi;
    if (!write_forward_inputs(fc, in_dir, seed, &fi)) return;
    const gdn_ref_inputs *in = &fi.in;
    const gdn_problem *p = &in->p;

    const size_t ob = (size_t)(p->B * p->T * p->Hv * p->V) * 2,
                 fb = (size_t)(in->N * p->Hv * p->V * p->K) * 4;
    gdn_bf16 *o = gdn_test_alloc((int64_t)ob, 1);
    float *f = gdn_test_alloc((int64_t)fb, 1);
    const char *extra = !recurrent                    ? ""
                        : pool_dtype == GDN_DTYPE_F32 ? "--pool-dtype f32 "
                                                      : "--pool-dtype bf16 ";
    gdn_context *ctx = NULL;
    if (CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL) &&
        (recurrent ? direct_recurrent(ctx, &fi, pool_dtype, o, f) : direct_forward(ctx, &fi, o, f)))
        forward_cli_vs_direct(fc, op, extra, in, in_dir, out_dir, o, ob, f, fb);
    gdn_context_destroy(ctx);
    free(o);
    free(f);
    gdn_test_fw_inputs_free(&fi);
}

static void test_forward(void) {
    static const int32_t cu[] = {0, 50, 50, 180, 200};
    const fwd_cli_case cases[] = {
        /* batch, h0, defaults */
        {{"batch", 2, 100, 2, 4, 32, 48, NULL, 0, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 0, 0}, "",
         0.0f, 0, 0, 0},
        /* varlen with an empty sequence, every option, int64 cu_seqlens,
         * f32 q/k/v, kv, tiled */
        {{"varlen_opts", 1, 200, 2, 6, 40, 24, cu, 4, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, 1, 1},
         "--scale 0.3 --l2norm-qk --beta-sigmoid --qwen-gate", 0.3f, 1, 1, 1},
        /* no h0, one option, --scale=0 (the default) */
        {{"single", 1, 130, 3, 3, 64, 32, NULL, 0, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0, 0},
         "--scale=0 --beta-sigmoid", 0.0f, 0, 1, 0},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_forward_case(&cases[i], "forward", GDN_DTYPE_F32, 300 + i);

    /* Errors: exit 2 with a message naming the file or the option. */
    char dir[2048], args[12288];
    snprintf(dir, sizeof dir, "%s/fwd_err_in", tmp_root);
    const fwd_cli_case c = {
        {"err", 1, 96, 2, 4, 16, 16, NULL, 0, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 0, 0},
        "", 0.0f, 0, 0, 0};
    gdn_test_fw_inputs fi;
    if (!write_forward_inputs(&c, dir, 9, &fi)) return;
    const gdn_ref_inputs *in = &fi.in;
    const gdn_problem *p = &in->p;
    const char *base = "run --op forward --backend cpu --in";
    snprintf(args, sizeof args, "%s '%s' --out '%s/fo'", base, dir, tmp_root);
    CHECK(gdn_cmd(args) == 0, "forward err baseline: %s", gdn_stderr());
    /* v with the wrong T */
    const int64_t bad_v[] = {p->B, p->T - 1, p->Hv, p->V};
    put(dir, "v.npy", "<u2", 4, bad_v, in->v);
    expect_usage_error("forward: v/q mismatch", args, "v.npy", "does not match");
    const int64_t vs[] = {p->B, p->T, p->Hv, p->V};
    put(dir, "v.npy", "<u2", 4, vs, in->v);
    /* k not the shape of q */
    const int64_t bad_k[] = {p->B, p->T, p->Hk, p->K + 1};
    gdn_bf16 *kz = gdn_test_alloc(p->T * p->Hk * (p->K + 1), 2);
    memset(kz, 0, (size_t)(p->T * p->Hk * (p->K + 1)) * 2);
    put(dir, "k.npy", "<u2", 4, bad_k, kz);
    free(kz);
    expect_usage_error("forward: k/q mismatch", args, "k.npy", "q.npy");
    const int64_t ks[] = {p->B, p->T, p->Hk, p->K};
    put(dir, "k.npy", "<u2", 4, ks, in->k);
    /* beta with Hv off by one */
    const int64_t bad_b[] = {p->B, p->T, p->Hv - 1};
    put(dir, "beta.npy", "<f4", 3, bad_b, in->beta);
    expect_usage_error("forward: beta shape", args, "beta.npy", "does not match");
    const int64_t gs[] = {p->B, p->T, p->Hv};
    put(dir, "beta.npy", "<f4", 3, gs, in->beta);
    /* --qwen-gate without A_log.npy */
    snprintf(args, sizeof args, "%s '%s' --out '%s/fo' --qwen-gate", base, dir, tmp_root);
    expect_usage_error("forward: qwen without A_log", args, "A_log.npy", "--qwen-gate");
    /* A_log of the wrong length */
    const float a3[3] = {0, 0, 0};
    const int64_t s3[] = {3};
    put(dir, "A_log.npy", "<f4", 1, s3, a3);
    put(dir, "dt_bias.npy", "<f4", 1, s3, a3);
    expect_usage_error("forward: A_log shape", args, "A_log.npy", "Hv=4");
    /* options */
    snprintf(args, sizeof args, "%s '%s' --out '%s/fo' --scale abc", base, dir, tmp_root);
    expect_usage_error("forward: scale abc", args, "--scale", "not a finite number");
    snprintf(args, sizeof args, "%s '%s' --out '%s/fo' --scale -1", base, dir, tmp_root);
    expect_usage_error("forward: scale -1", args, "--scale", ">= 0");
    snprintf(args, sizeof args, "%s '%s' --out '%s/fo' --l2norm-qk=1", base, dir, tmp_root);
    expect_usage_error("forward: flag with a value", args, "--l2norm-qk", "takes no value");
    snprintf(args, sizeof args, "run --op state --backend cpu --in '%s' --out '%s/fo' --l2norm-qk",
             dir, tmp_root);
    expect_usage_error("state with a forward flag", args, "apply to --op forward", NULL);
    CHECK(gdn_cmd("run --help") == 0 && strstr(gdn_stdout(), "--op forward") &&
              strstr(gdn_stdout(), "--qwen-gate"),
          "gdn run --help lacks --op forward");
    gdn_test_fw_inputs_free(&fi);
}

/* ---- gdn run --op recurrent ------------------------------------------------ */

static void test_recurrent(void) {
    static const int32_t cu[] = {0, 3, 3, 8, 9};
    const fwd_cli_case cases[] = {
        /* decode: a batch of one token each, h0, defaults */
        {{"decode", 4, 1, 2, 4, 32, 48, NULL, 0, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 0, 0}, "",
         0.0f, 0, 0, 0},
        /* varlen with an empty sequence, every option, kv, tiled, f32 q/k/v */
        {{"varlen_opts", 1, 9, 2, 6, 40, 24, cu, 4, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, 1, 1},
         "--scale 0.3 --l2norm-qk --beta-sigmoid --qwen-gate", 0.3f, 1, 1, 1},
        /* one sequence, no h0 */
        {{"single", 1, 5, 3, 3, 64, 32, NULL, 0, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0, 0},
         "--beta-sigmoid", 0.0f, 0, 1, 0},
    };
    test_forward_case(&cases[0], "recurrent", GDN_DTYPE_F32, 400);
    test_forward_case(&cases[1], "recurrent", GDN_DTYPE_BF16, 401);
    test_forward_case(&cases[2], "recurrent", GDN_DTYPE_F32, 402);

    /* Errors: exit 2 with a message naming the option. */
    char dir[2048], args[12288];
    snprintf(dir, sizeof dir, "%s/rec_decode_in", tmp_root); /* written above */
    snprintf(args, sizeof args,
             "run --op recurrent --backend cpu --in '%s' --out '%s/ro' --pool-dtype f16", dir,
             tmp_root);
    expect_usage_error("recurrent: pool dtype f16", args, "--pool-dtype", "f16");
    snprintf(args, sizeof args,
             "run --op forward --backend cpu --in '%s' --out '%s/ro' --pool-dtype bf16", dir,
             tmp_root);
    expect_usage_error("forward with --pool-dtype", args, "--pool-dtype", "--op recurrent only");
    snprintf(args, sizeof args, "run --op recurrent --backend cpu --in '%s/none' --out '%s/ro'",
             dir, tmp_root);
    expect_usage_error("recurrent: missing q.npy", args, "q.npy", "open");
    CHECK(gdn_cmd("run --help") == 0 && strstr(gdn_stdout(), "--op recurrent") &&
              strstr(gdn_stdout(), "--pool-dtype"),
          "gdn run --help lacks --op recurrent");
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/gdn_test_cli_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmp_root)) {
        printf("FAIL: mkdtemp(%s) failed\n", tmp_root);
        return 1;
    }
    const double t0 = gdn_test_seconds();

    static const char *const dtypes[] = {"<u2", "<f4", "<i4", "<i8"};
    const int64_t s3[] = {2, 3, 5}, s1[] = {7}, s8[] = {1, 2, 1, 3, 1, 2, 1, 2}, s0[] = {3, 0};
    for (int d = 0; d < 4; d++) {
        roundtrip(dtypes[d], 0, NULL);
        roundtrip(dtypes[d], 1, s1);
        roundtrip(dtypes[d], 3, s3);
        roundtrip(dtypes[d], 8, s8);
        roundtrip(dtypes[d], 2, s0);
    }
    test_npy_headers();
    test_npy_int32();
    test_npy_malformed();
    test_run();
    if (!gdn_dev_available()) printf("note: no GPU, the --backend cuda runs were skipped\n");
    test_errors();
    test_forward();
    test_recurrent();

    if (gdn_test_failed == 0) {
        char cmd[8192];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
        if (system(cmd) != 0) printf("note: could not remove %s\n", tmp_root);
    } else {
        printf("files kept in %s\n", tmp_root);
    }
    printf("(%.1f s)\n", gdn_test_seconds() - t0);
    return gdn_test_finish("test_cli");
}

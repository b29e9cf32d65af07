/* gdn run: an operation on .npy files (see cli_run_usage in gdn.c):
 * "state" (gdn_chunk_state), "forward" (gdn_chunk_forward) and
 * "recurrent" (gdn_recurrent_forward, on forward's inputs). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bf16.h"
#include "cli.h"
#include "devbuf.h"
#include "npy.h"

static const char *const CMD = "run";

#define PATH_LEN 4096

/* The operations, for messages. */
#define RUN_OPS "operations: state, forward, recurrent"

/* The input arrays of --op state. */
typedef struct state_inputs {
    npy_array k, w, u, g, h0, cu;
    int have_h0, have_cu;
    char path_k[PATH_LEN], path_w[PATH_LEN], path_u[PATH_LEN], path_g[PATH_LEN],
        path_h0[PATH_LEN], path_cu[PATH_LEN];
} state_inputs;

static void inputs_free(state_inputs *in) {
    npy_free(&in->k);
    npy_free(&in->w);
    npy_free(&in->u);
    npy_free(&in->g);
    npy_free(&in->h0);
    npy_free(&in->cu);
}

static int join(char *out, const char *dir, const char *name) {
    int n = snprintf(out, PATH_LEN, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_LEN) return cli_error(CLI_USAGE, CMD, "path too long: %s/%s", dir, name);
    return CLI_OK;
}

static int load(const char *path, npy_array *a) {
    char err[1024];
    if (npy_read(path, a, err, sizeof err) != 0) return cli_error(CLI_USAGE, CMD, "%s", err);
    return CLI_OK;
}

/* Load path if it exists; *present says whether it did. */
static int load_optional(const char *path, npy_array *a, int *present) {
    *present = 0;
    if (access(path, F_OK) != 0 && errno == ENOENT) return CLI_OK;
    *present = 1;
    return load(path, a);
}

/* The dtype must be one of allowed[0..n-1]. */
static int check_dtype(const char *path, const npy_array *a, const char *const *allowed, int n,
                       const char *what) {
    for (int i = 0; i < n; i++)
        if (strcmp(a->dtype, allowed[i]) == 0) return CLI_OK;
    return cli_error(CLI_USAGE, CMD, "%s: dtype is '%s', expected %s", path, a->dtype, what);
}

static const char *const BF16_DTYPES[] = {"<u2", "<f4"};
static const char *const BF16_WHAT = "bf16 as '<u2' (raw bits) or '<f4' (rounded to bf16)";
static const char *const F32_DTYPES[] = {"<f4"};
static const char *const F32_WHAT = "'<f4' (float32)";
static const char *const INT_DTYPES[] = {"<i4", "<i8"};

/* The shape must have ndim dims, and dim i must equal want[i] where that
 * is >= 0. names give the dims' names; source says where want came from. */
static int check_shape(const char *path, const npy_array *a, int ndim, const char *const *names,
                       const int64_t *want, const char *source) {
    int ok = a->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (want[i] >= 0 && a->shape[i] != want[i]) ok = 0;
    if (ok) return CLI_OK;
    char expect[256], got[256];
    size_t used = 0;
    expect[0] = '\0';
    for (int i = 0; i < ndim && used < sizeof expect; i++) {
        int n = want[i] >= 0 ? snprintf(expect + used, sizeof expect - used, "%s%s=%lld",
                                        i ? ", " : "[", names[i], (long long)want[i])
                             : snprintf(expect + used, sizeof expect - used, "%s%s",
                                        i ? ", " : "[", names[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    if (used < sizeof expect) snprintf(expect + used, sizeof expect - used, "]");
    npy_shape_str(a->ndim, a->shape, got, sizeof got);
    if (a->ndim != ndim)
        return cli_error(CLI_USAGE, CMD, "%s: has %d dims, shape %s; expected %d dims %s", path,
                         a->ndim, got, ndim, expect);
    return cli_error(CLI_USAGE, CMD, "%s: shape %s does not match the expected %s (%s)", path, got,
                     expect, source);
}

/* What a tensor file holds: bf16 ('<u2' raw bits, or '<f4' to be rounded)
 * or float32 ('<f4'). */
typedef enum { AS_BF16, AS_F32 } elem_kind;

/* a's dtype must be of kind, and its shape as check_shape says. */
static int check_array(const char *path, const npy_array *a, elem_kind kind, int ndim,
                       const char *const *names, const int64_t *want, const char *source) {
    int rc = kind == AS_BF16 ? check_dtype(path, a, BF16_DTYPES, 2, BF16_WHAT)
                             : check_dtype(path, a, F32_DTYPES, 1, F32_WHAT);
    return rc ? rc : check_shape(path, a, ndim, names, want, source);
}

/* load, then check_array. */
static int load_array(const char *path, npy_array *a, elem_kind kind, int ndim,
                      const char *const *names, const int64_t *want, const char *source) {
    int rc = load(path, a);
    return rc ? rc : check_array(path, a, kind, ndim, names, want, source);
}

/* Hv value heads (from path) must be a multiple of Hk key heads (from hk_from). */
static int check_heads(const char *path, int64_t Hv, int64_t Hk, const char *hk_from) {
    if (Hk > 0 && Hv % Hk != 0)
        return cli_error(CLI_USAGE, CMD,
                         "%s: Hv = %lld value heads is not a multiple of Hk = %lld key heads "
                         "(from %s)",
                         path, (long long)Hv, (long long)Hk, hk_from);
    return CLI_OK;
}

/* A '<f4' array given for a bf16 tensor becomes '<u2', rounded. */
static int to_bf16(const char *path, npy_array *a) {
    if (strcmp(a->dtype, "<u2") == 0) return CLI_OK;
    uint16_t *b = (uint16_t *)malloc(a->count ? (size_t)a->count * 2 : 1);
    if (!b) return cli_error(CLI_FAIL, CMD, "%s: out of memory converting to bf16", path);
    const float *f = (const float *)a->data;
    for (int64_t i = 0; i < a->count; i++) b[i] = gdn_f32_to_bf16(f[i]);
    free(a->data);
    a->data = b;
    memcpy(a->dtype, "<u2", 4);
    a->itemsize = 2;
    a->nbytes = (size_t)a->count * 2;
    return CLI_OK;
}

/* mkdir -p. */
static int make_dirs(const char *dir) {
    char buf[PATH_LEN];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return cli_error(CLI_USAGE, CMD, "path too long: %s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return cli_error(CLI_FAIL, CMD, "cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return cli_error(CLI_FAIL, CMD, "cannot create directory %s: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return cli_error(CLI_USAGE, CMD, "--out %s is not a directory", dir);
    return CLI_OK;
}

/* The dims of n states of p: [n, Hv, V, K], or [n, Hv, K, V] with kv. */
static void state_dims(const gdn_problem *p, int64_t n, int64_t dims[4]) {
    const int kv = p->state_layout == GDN_STATE_KV;
    dims[0] = n;
    dims[1] = p->Hv;
    dims[2] = kv ? p->K : p->V;
    dims[3] = kv ? p->V : p->K;
}

/* Load the optional cu_seqlens file and check it against p's B and T (whose
 * source names the file they came from); if present, p takes its sequences. */
static int load_cu_seqlens(const char *path, npy_array *cu_arr, int *have, gdn_problem *p,
                           const char *source) {
    int rc;
    if ((rc = load_optional(path, cu_arr, have))) return rc;
    if (!*have) return CLI_OK;
    char err[1024];
    static const char *const CN[] = {"N+1"};
    const int64_t any1[] = {-1};
    if ((rc = check_dtype(path, cu_arr, INT_DTYPES, 2, "'<i4' or '<i8'")) ||
        (rc = check_shape(path, cu_arr, 1, CN, any1, "")))
        return rc;
    if (npy_to_int32(cu_arr, path, err, sizeof err) != 0)
        return cli_error(CLI_USAGE, CMD, "%s", err);
    if (cu_arr->count < 2)
        return cli_error(CLI_USAGE, CMD,
                         "%s: has %lld entries; it needs N+1 >= 2 (at least one sequence)", path,
                         (long long)cu_arr->count);
    if (p->B != 1)
        return cli_error(CLI_USAGE, CMD,
                         "%s is given, so the batch dim B of %s must be 1 (packed sequences "
                         "along T), but it is %lld",
                         path, source, (long long)p->B);
    const int32_t *cu = (const int32_t *)cu_arr->data;
    const int64_t n_seq = cu_arr->count - 1;
    if (cu[0] != 0)
        return cli_error(CLI_USAGE, CMD, "%s: cu_seqlens[0] is %d, must be 0", path, cu[0]);
    for (int64_t n = 0; n < n_seq; n++)
        if (cu[n + 1] < cu[n])
            return cli_error(CLI_USAGE, CMD,
                             "%s: must be non-decreasing, but cu_seqlens[%lld] = %d < "
                             "cu_seqlens[%lld] = %d",
                             path, (long long)(n + 1), cu[n + 1], (long long)n, cu[n]);
    if (cu[n_seq] != p->T)
        return cli_error(CLI_USAGE, CMD,
                         "%s: the last entry cu_seqlens[%lld] = %d must equal T = %lld (from %s)",
                         path, (long long)n_seq, cu[n_seq], (long long)p->T, source);
    p->cu_seqlens = cu;
    p->num_seqs = n_seq;
    return CLI_OK;
}

/* Load the optional h0 file: '<f4', the dims of p's N states. Without
 * cu_seqlens N is the B of the file b_from; dims_from says where Hv, K and V
 * came from. */
static int load_h0(const char *path, npy_array *h0, int *have, const gdn_problem *p,
                   const char *b_from, const char *dims_from) {
    int rc;
    if ((rc = load_optional(path, h0, have))) return rc;
    if (!*have) return CLI_OK;
    static const char *const HVK[] = {"N", "Hv", "V", "K"};
    static const char *const HKV[] = {"N", "Hv", "K", "V"};
    const int kv = p->state_layout == GDN_STATE_KV;
    int64_t want[4];
    state_dims(p, gdn_problem_num_seqs(p), want);
    char src[160];
    snprintf(src, sizeof src, "N from %s%s, %s; state layout %s",
             p->cu_seqlens ? "cu_seqlens.npy" : b_from, p->cu_seqlens ? "" : "'s B", dims_from,
             kv ? "kv" : "vk");
    return check_array(path, h0, AS_F32, 4, kv ? HKV : HVK, want, src);
}

/* Read and cross-check the inputs; fills the problem's shape. */
static int load_state_inputs(const char *dir, state_inputs *in, gdn_problem *p,
                             gdn_state_layout layout) {
    int rc;
    if ((rc = join(in->path_k, dir, "k.npy")) || (rc = join(in->path_w, dir, "w.npy")) ||
        (rc = join(in->path_u, dir, "u.npy")) || (rc = join(in->path_g, dir, "g_cumsum.npy")) ||
        (rc = join(in->path_h0, dir, "h0.npy")) || (rc = join(in->path_cu, dir, "cu_seqlens.npy")))
        return rc;

    /* k fixes B, T, Hk, K. */
    static const char *const KN[] = {"B", "T", "Hk", "K"};
    const int64_t any4[] = {-1, -1, -1, -1};
    if ((rc = load_array(in->path_k, &in->k, AS_BF16, 4, KN, any4, ""))) return rc;
    const int64_t B = in->k.shape[0], T = in->k.shape[1], Hk = in->k.shape[2],
                  K = in->k.shape[3];

    /* w fixes Hv. */
    static const char *const WN[] = {"B", "T", "Hv", "K"};
    const int64_t ww[] = {B, T, -1, K};
    if ((rc = load_array(in->path_w, &in->w, AS_BF16, 4, WN, ww, "B, T and K from k.npy")))
        return rc;
    const int64_t Hv = in->w.shape[2];
    if ((rc = check_heads(in->path_w, Hv, Hk, "k.npy"))) return rc;

    /* u fixes V. */
    static const char *const UN[] = {"B", "T", "Hv", "V"};
    const int64_t wu[] = {B, T, Hv, -1};
    if ((rc = load_array(in->path_u, &in->u, AS_BF16, 4, UN, wu,
                         "B, T from k.npy, Hv from w.npy")))
        return rc;
    const int64_t V = in->u.shape[3];

    static const char *const GN[] = {"B", "T", "Hv"};
    const int64_t wg[] = {B, T, Hv};
    if ((rc = load_array(in->path_g, &in->g, AS_F32, 3, GN, wg,
                         "B, T from k.npy, Hv from w.npy")))
        return rc;

    gdn_problem_init(p, B, T, Hk, Hv, K, V);
    p->state_layout = layout;
    if ((rc = load_cu_seqlens(in->path_cu, &in->cu, &in->have_cu, p, "k.npy")) ||
        (rc = load_h0(in->path_h0, &in->h0, &in->have_h0, p, "k.npy",
                      "Hv from w.npy, K from k.npy, V from u.npy")))
        return rc;

    if ((rc = to_bf16(in->path_k, &in->k)) || (rc = to_bf16(in->path_w, &in->w)) ||
        (rc = to_bf16(in->path_u, &in->u)))
        return rc;
    return CLI_OK;
}

/* Device copies for the CUDA backend. */
enum { D_K, D_W, D_U, D_G, D_H0, D_CU, D_H, D_V, D_F, D_WS, D_COUNT };

static int dev_put(void **d, const void *h, size_t bytes, const char *what) {
    if (gdn_dev_alloc(d, bytes) != 0 || (h && gdn_dev_upload(*d, h, bytes) != 0))
        return cli_error(CLI_FAIL, CMD, "device buffer for %s (%zu bytes): %s", what, bytes,
                         gdn_dev_error());
    return CLI_OK;
}

static int run_state_cuda(gdn_context *ctx, gdn_problem *p, const state_inputs *in,
                          size_t ws_bytes, gdn_bf16 *h_out, size_t h_bytes, gdn_bf16 *v_new,
                          size_t v_bytes, float *final_state, size_t f_bytes) {
    void *d[D_COUNT] = {0};
    int rc;
    if ((rc = dev_put(&d[D_K], in->k.data, in->k.nbytes, "k")) ||
        (rc = dev_put(&d[D_W], in->w.data, in->w.nbytes, "w")) ||
        (rc = dev_put(&d[D_U], in->u.data, in->u.nbytes, "u")) ||
        (rc = dev_put(&d[D_G], in->g.data, in->g.nbytes, "g_cumsum")) ||
        (in->have_h0 && (rc = dev_put(&d[D_H0], in->h0.data, in->h0.nbytes, "h0"))) ||
        (in->have_cu && (rc = dev_put(&d[D_CU], in->cu.data, in->cu.nbytes, "cu_seqlens"))) ||
        (rc = dev_put(&d[D_H], NULL, h_bytes, "h")) ||
        (rc = dev_put(&d[D_V], NULL, v_bytes, "v_new")) ||
        (rc = dev_put(&d[D_F], NULL, f_bytes, "final_state")) ||
        (ws_bytes && (rc = dev_put(&d[D_WS], NULL, ws_bytes, "workspace"))))
        goto done;
    p->cu_seqlens_device = (const int32_t *)d[D_CU];
    gdn_status st = gdn_chunk_state(ctx, p, d[D_K], d[D_W], d[D_U], d[D_G], d[D_H0], d[D_H],
                                    d[D_V], d[D_F], d[D_WS], ws_bytes);
    p->cu_seqlens_device = NULL;
    if (st != GDN_SUCCESS) {
        rc = cli_lib_error(CMD, "gdn_chunk_state", ctx, st);
        goto done;
    }
    if (gdn_dev_sync() != 0 || gdn_dev_download(h_out, d[D_H], h_bytes) != 0 ||
        gdn_dev_download(v_new, d[D_V], v_bytes) != 0 ||
        gdn_dev_download(final_state, d[D_F], f_bytes) != 0)
        rc = cli_error(CLI_FAIL, CMD, "after gdn_chunk_state: %s", gdn_dev_error());
done:
    for (int i = 0; i < D_COUNT; i++) gdn_dev_free(d[i]);
    return rc;
}

static int write_out(const char *dir, const char *name, const char *dtype, int ndim,
                     const int64_t *shape, const void *data) {
    char path[PATH_LEN], err[1024], sh[160];
    int rc = join(path, dir, name);
    if (rc) return rc;
    if (npy_write(path, dtype, ndim, shape, data, err, sizeof err) != 0)
        return cli_error(CLI_FAIL, CMD, "%s", err);
    printf("  wrote %s %s %s\n", path, npy_shape_str(ndim, shape, sh, sizeof sh), dtype);
    return CLI_OK;
}

/* malloc for an output: at least 1 byte, so an empty output is not NULL. */
static void *alloc_out(size_t bytes) { return malloc(bytes ? bytes : 1); }

/* The summary line every op prints: "gdn run --op OP: backend ..., N=..",
 * " NT=.." when NT >= 0, the state layout, head map and h0, then tail. */
static void print_summary(const char *op, gdn_context *ctx, const gdn_problem *p, int64_t NT,
                          int have_h0, const char *tail) {
    char nt[32] = "";
    if (NT >= 0) snprintf(nt, sizeof nt, " NT=%lld", (long long)NT);
    printf("gdn run --op %s: backend %s (%s), B=%lld T=%lld Hk=%lld Hv=%lld K=%lld V=%lld, "
           "N=%lld%s, state %s, head map %s, h0 %s%s\n",
           op, cli_backend_name(gdn_context_backend(ctx)), cli_device_name(ctx), (long long)p->B,
           (long long)p->T, (long long)p->Hk, (long long)p->Hv, (long long)p->K, (long long)p->V,
           (long long)gdn_problem_num_seqs(p), nt, p->state_layout == GDN_STATE_KV ? "kv" : "vk",
           p->head_map == GDN_HEAD_MAP_TILED ? "tiled" : "block", have_h0 ? "given" : "zero",
           tail);
}

static int run_state(const char *in_dir, const char *out_dir, gdn_state_layout layout,
                     gdn_head_map head_map, gdn_backend backend, int device) {
    state_inputs in;
    memset(&in, 0, sizeof in);
    gdn_problem p;
    gdn_context *ctx = NULL;
    gdn_bf16 *h_out = NULL, *v_new = NULL;
    float *final_state = NULL;
    int rc = load_state_inputs(in_dir, &in, &p, layout);
    if (rc) goto done;
    p.head_map = head_map;
    if ((rc = cli_context(CMD, backend, device, &ctx))) goto done;

    size_t ws_bytes = 0;
    gdn_status st = gdn_chunk_state_workspace_size(ctx, &p, &ws_bytes);
    if (st != GDN_SUCCESS) {
        rc = cli_lib_error(CMD, "gdn_chunk_state_workspace_size", ctx, st);
        goto done;
    }
    const int64_t N = gdn_problem_num_seqs(&p), NT = gdn_problem_num_chunks(&p);
    const int64_t state = p.Hv * p.K * p.V;
    const size_t h_bytes = (size_t)(NT * state) * sizeof(gdn_bf16);
    const size_t v_bytes = (size_t)(p.B * p.T * p.Hv * p.V) * sizeof(gdn_bf16);
    const size_t f_bytes = (size_t)(N * state) * sizeof(float);
    h_out = (gdn_bf16 *)alloc_out(h_bytes);
    v_new = (gdn_bf16 *)alloc_out(v_bytes);
    final_state = (float *)alloc_out(f_bytes);
    if (!h_out || !v_new || !final_state) {
        rc = cli_error(CLI_FAIL, CMD, "out of memory for the outputs (%zu bytes)",
                       h_bytes + v_bytes + f_bytes);
        goto done;
    }
    const float *h0 = in.have_h0 ? (const float *)in.h0.data : NULL;
    if (gdn_context_backend(ctx) == GDN_BACKEND_CUDA) {
        rc = run_state_cuda(ctx, &p, &in, ws_bytes, h_out, h_bytes, v_new, v_bytes, final_state,
                            f_bytes);
        if (rc) goto done;
    } else {
        st = gdn_chunk_state(ctx, &p, in.k.data, in.w.data, in.u.data, in.g.data, h0, h_out,
                             v_new, final_state, NULL, 0);
        if (st != GDN_SUCCESS) {
            rc = cli_lib_error(CMD, "gdn_chunk_state", ctx, st);
            goto done;
        }
    }
    if ((rc = make_dirs(out_dir))) goto done;

    print_summary("state", ctx, &p, NT, in.have_h0, "");
    int64_t fs[4];
    state_dims(&p, N, fs);
    if (!in.have_cu && p.B > 1) {
        /* FLA's h layout: [B, NT per sequence, H, ...]. */
        const int64_t hs[] = {p.B, NT / p.B, p.Hv, fs[2], fs[3]};
        rc = write_out(out_dir, "h.npy", "<u2", 5, hs, h_out);
    } else {
        int64_t hs[4];
        state_dims(&p, NT, hs);
        rc = write_out(out_dir, "h.npy", "<u2", 4, hs, h_out);
    }
    if (rc) goto done;
    const int64_t vs[] = {p.B, p.T, p.Hv, p.V};
    if ((rc = write_out(out_dir, "v_new.npy", "<u2", 4, vs, v_new))) goto done;
    rc = write_out(out_dir, "final_state.npy", "<f4", 4, fs, final_state);
done:
    free(h_out);
    free(v_new);
    free(final_state);
    gdn_context_destroy(ctx);
    inputs_free(&in);
    return rc;
}

/* ---- --op forward and --op recurrent: their inputs -------------------- */

/* The input arrays of --op forward (and recurrent). */
typedef struct forward_inputs {
    npy_array q, k, v, g, beta, h0, cu, A_log, dt_bias;
    int have_h0, have_cu;
    char path_q[PATH_LEN], path_k[PATH_LEN], path_v[PATH_LEN], path_g[PATH_LEN],
        path_beta[PATH_LEN], path_h0[PATH_LEN], path_cu[PATH_LEN], path_alog[PATH_LEN],
        path_dtb[PATH_LEN];
} forward_inputs;

static void forward_inputs_free(forward_inputs *in) {
    npy_array *all[] = {&in->q,  &in->k,  &in->v,     &in->g,      &in->beta,
                        &in->h0, &in->cu, &in->A_log, &in->dt_bias};
    for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++) npy_free(all[i]);
}

/* Read and cross-check the inputs of --op forward; fills the problem. */
static int load_forward_inputs(const char *dir, forward_inputs *in, gdn_problem *p,
                               gdn_state_layout layout, int qwen_gate) {
    int rc;
    if ((rc = join(in->path_q, dir, "q.npy")) || (rc = join(in->path_k, dir, "k.npy")) ||
        (rc = join(in->path_v, dir, "v.npy")) || (rc = join(in->path_g, dir, "g.npy")) ||
        (rc = join(in->path_beta, dir, "beta.npy")) || (rc = join(in->path_h0, dir, "h0.npy")) ||
        (rc = join(in->path_cu, dir, "cu_seqlens.npy")) ||
        (rc = join(in->path_alog, dir, "A_log.npy")) ||
        (rc = join(in->path_dtb, dir, "dt_bias.npy")))
        return rc;

    /* q fixes B, T, Hk, K; k must match it. */
    static const char *const QN[] = {"B", "T", "Hk", "K"};
    const int64_t any4[] = {-1, -1, -1, -1};
    if ((rc = load_array(in->path_q, &in->q, AS_BF16, 4, QN, any4, ""))) return rc;
    const int64_t B = in->q.shape[0], T = in->q.shape[1], Hk = in->q.shape[2],
                  K = in->q.shape[3];
    const int64_t wk[] = {B, T, Hk, K};
    if ((rc = load_array(in->path_k, &in->k, AS_BF16, 4, QN, wk, "the shape of q.npy")))
        return rc;

    /* v fixes Hv and V. */
    static const char *const VN[] = {"B", "T", "Hv", "V"};
    const int64_t wv[] = {B, T, -1, -1};
    if ((rc = load_array(in->path_v, &in->v, AS_BF16, 4, VN, wv, "B, T from q.npy"))) return rc;
    const int64_t Hv = in->v.shape[2], V = in->v.shape[3];
    if ((rc = check_heads(in->path_v, Hv, Hk, "q.npy"))) return rc;

    static const char *const GN[] = {"B", "T", "Hv"};
    const int64_t wg[] = {B, T, Hv};
    const char *gsrc = "B, T from q.npy, Hv from v.npy";
    if ((rc = load_array(in->path_g, &in->g, AS_F32, 3, GN, wg, gsrc)) ||
        (rc = load_array(in->path_beta, &in->beta, AS_F32, 3, GN, wg, gsrc)))
        return rc;

    gdn_problem_init(p, B, T, Hk, Hv, K, V);
    p->state_layout = layout;
    if ((rc = load_cu_seqlens(in->path_cu, &in->cu, &in->have_cu, p, "q.npy")) ||
        (rc = load_h0(in->path_h0, &in->h0, &in->have_h0, p, "q.npy",
                      "Hv and V from v.npy, K from q.npy")))
        return rc;

    if (qwen_gate) {
        static const char *const HN[] = {"Hv"};
        const int64_t wa[] = {Hv};
        const char *const paths[2] = {in->path_alog, in->path_dtb};
        npy_array *arrs[2] = {&in->A_log, &in->dt_bias};
        for (int i = 0; i < 2; i++) {
            int present = 0;
            if ((rc = load_optional(paths[i], arrs[i], &present))) return rc;
            if (!present)
                return cli_error(CLI_USAGE, CMD, "%s is missing: --qwen-gate needs A_log.npy and "
                                 "dt_bias.npy ('<f4', [Hv])", paths[i]);
            if ((rc = check_array(paths[i], arrs[i], AS_F32, 1, HN, wa, "Hv from v.npy")))
                return rc;
        }
    }

    if ((rc = to_bf16(in->path_q, &in->q)) || (rc = to_bf16(in->path_k, &in->k)) ||
        (rc = to_bf16(in->path_v, &in->v)))
        return rc;
    return CLI_OK;
}

/* Device slots of the forward inputs; each op's own buffers follow them. */
enum { X_Q, X_K, X_V, X_G, X_BETA, X_H0, X_CU, X_ALOG, X_DTB, X_INPUTS };

/* Upload the forward inputs into d[0 .. X_INPUTS) (h0 only with with_h0),
 * and make *dopts opts with the gate's parameters on the device. */
static int forward_inputs_to_device(void **d, const forward_inputs *in, int with_h0,
                                    const gdn_forward_options *opts,
                                    gdn_forward_options *dopts) {
    const int qwen = opts->qwen_gate;
    int rc;
    if ((rc = dev_put(&d[X_Q], in->q.data, in->q.nbytes, "q")) ||
        (rc = dev_put(&d[X_K], in->k.data, in->k.nbytes, "k")) ||
        (rc = dev_put(&d[X_V], in->v.data, in->v.nbytes, "v")) ||
        (rc = dev_put(&d[X_G], in->g.data, in->g.nbytes, "g")) ||
        (rc = dev_put(&d[X_BETA], in->beta.data, in->beta.nbytes, "beta")) ||
        (with_h0 && in->have_h0 && (rc = dev_put(&d[X_H0], in->h0.data, in->h0.nbytes, "h0"))) ||
        (in->have_cu && (rc = dev_put(&d[X_CU], in->cu.data, in->cu.nbytes, "cu_seqlens"))) ||
        (qwen && (rc = dev_put(&d[X_ALOG], in->A_log.data, in->A_log.nbytes, "A_log"))) ||
        (qwen && (rc = dev_put(&d[X_DTB], in->dt_bias.data, in->dt_bias.nbytes, "dt_bias"))))
        return rc;
    *dopts = *opts;
    dopts->A_log = (const float *)d[X_ALOG];
    dopts->dt_bias = (const float *)d[X_DTB];
    return CLI_OK;
}

/* What a run of --op forward or --op recurrent holds besides its outputs. */
typedef struct forward_run {
    forward_inputs in;
    gdn_problem p;
    gdn_context *ctx;
} forward_run;

/* Load the inputs, point opts at the gate's parameters and create the
 * context. Call forward_close afterwards, whatever this returns. */
static int forward_open(forward_run *r, const char *in_dir, gdn_state_layout layout,
                        gdn_head_map head_map, gdn_backend backend, int device,
                        gdn_forward_options *opts) {
    memset(r, 0, sizeof *r);
    int rc = load_forward_inputs(in_dir, &r->in, &r->p, layout, opts->qwen_gate);
    if (rc) return rc;
    r->p.head_map = head_map;
    if (opts->qwen_gate) {
        opts->A_log = (const float *)r->in.A_log.data;
        opts->dt_bias = (const float *)r->in.dt_bias.data;
    }
    return cli_context(CMD, backend, device, &r->ctx);
}

/* Create out_dir, print the summary line (pool: the pool's dtype with
 * --op recurrent, else NULL) and write o.npy and final_state.npy. */
static int forward_finish(const forward_run *r, const char *op, const char *out_dir,
                          const gdn_forward_options *opts, const char *pool, const gdn_bf16 *o,
                          const float *final_state) {
    int rc = make_dirs(out_dir);
    if (rc) return rc;
    const gdn_problem *p = &r->p;
    char tail[160];
    snprintf(tail, sizeof tail, "%s%s, scale %g%s%s%s", pool ? ", pool " : "", pool ? pool : "",
             opts->scale != 0.0f ? (double)opts->scale : 1.0 / sqrt((double)p->K),
             opts->l2norm_qk ? ", l2norm q/k" : "", opts->beta_sigmoid ? ", sigmoid beta" : "",
             opts->qwen_gate ? ", qwen gate" : "");
    print_summary(op, r->ctx, p, -1, r->in.have_h0, tail);
    const int64_t os[] = {p->B, p->T, p->Hv, p->V};
    if ((rc = write_out(out_dir, "o.npy", "<u2", 4, os, o))) return rc;
    int64_t fs[4];
    state_dims(p, gdn_problem_num_seqs(p), fs);
    return write_out(out_dir, "final_state.npy", "<f4", 4, fs, final_state);
}

static void forward_close(forward_run *r) {
    gdn_context_destroy(r->ctx);
    forward_inputs_free(&r->in);
}

/* ---- --op forward: gdn_chunk_forward ---------------------------------- */

/* gdn_chunk_forward on the CUDA backend through device copies. */
static int run_forward_cuda(gdn_context *ctx, gdn_problem *p, const gdn_forward_options *opts,
                            const forward_inputs *in, size_t ws_bytes, gdn_bf16 *o,
                            size_t o_bytes, float *final_state, size_t f_bytes) {
    enum { F_O = X_INPUTS, F_F, F_WS, F_COUNT };
    void *d[F_COUNT] = {0};
    gdn_forward_options dopts;
    int rc;
    if ((rc = forward_inputs_to_device(d, in, 1, opts, &dopts)) ||
        (rc = dev_put(&d[F_O], NULL, o_bytes, "o")) ||
        (rc = dev_put(&d[F_F], NULL, f_bytes, "final_state")) ||
        (ws_bytes && (rc = dev_put(&d[F_WS], NULL, ws_bytes, "workspace"))))
        goto done;
    p->cu_seqlens_device = (const int32_t *)d[X_CU];
    gdn_status st = gdn_chunk_forward(ctx, p, &dopts, d[X_Q], d[X_K], d[X_V], d[X_G], d[X_BETA],
                                      d[X_H0], d[F_O], d[F_F], NULL, d[F_WS], ws_bytes);
    p->cu_seqlens_device = NULL;
    if (st != GDN_SUCCESS) {
        rc = cli_lib_error(CMD, "gdn_chunk_forward", ctx, st);
        goto done;
    }
    if (gdn_dev_sync() != 0 || gdn_dev_download(o, d[F_O], o_bytes) != 0 ||
        gdn_dev_download(final_state, d[F_F], f_bytes) != 0)
        rc = cli_error(CLI_FAIL, CMD, "after gdn_chunk_forward: %s", gdn_dev_error());
done:
    for (int i = 0; i < F_COUNT; i++) gdn_dev_free(d[i]);
    return rc;
}

static int run_forward(const char *in_dir, const char *out_dir, gdn_state_layout layout,
                       gdn_head_map head_map, gdn_backend backend, int device,
                       gdn_forward_options *opts) {
    forward_run r;
    gdn_bf16 *o = NULL;
    float *final_state = NULL;
    int rc = forward_open(&r, in_dir, layout, head_map, backend, device, opts);
    if (rc) goto done;

    size_t ws_bytes = 0;
    gdn_status st = gdn_chunk_forward_workspace_size(r.ctx, &r.p, opts, &ws_bytes);
    if (st != GDN_SUCCESS) {
        rc = cli_lib_error(CMD, "gdn_chunk_forward_workspace_size", r.ctx, st);
        goto done;
    }
    const gdn_problem *p = &r.p;
    const int64_t N = gdn_problem_num_seqs(p);
    const size_t o_bytes = (size_t)(p->B * p->T * p->Hv * p->V) * sizeof(gdn_bf16);
    const size_t f_bytes = (size_t)(N * p->Hv * p->K * p->V) * sizeof(float);
    o = (gdn_bf16 *)alloc_out(o_bytes);
    final_state = (float *)alloc_out(f_bytes);
    if (!o || !final_state) {
        rc = cli_error(CLI_FAIL, CMD, "out of memory for the outputs (%zu bytes)",
                       o_bytes + f_bytes);
        goto done;
    }
    if (gdn_context_backend(r.ctx) == GDN_BACKEND_CUDA) {
        rc = run_forward_cuda(r.ctx, &r.p, opts, &r.in, ws_bytes, o, o_bytes, final_state,
                              f_bytes);
        if (rc) goto done;
    } else {
        const forward_inputs *in = &r.in;
        st = gdn_chunk_forward(r.ctx, p, opts, in->q.data, in->k.data, in->v.data, in->g.data,
                               in->beta.data, in->have_h0 ? (const float *)in->h0.data : NULL, o,
                               final_state, NULL, NULL, 0);
        if (st != GDN_SUCCESS) {
            rc = cli_lib_error(CMD, "gdn_chunk_forward", r.ctx, st);
            goto done;
        }
    }
    rc = forward_finish(&r, "forward", out_dir, opts, NULL, o, final_state);
done:
    free(o);
    free(final_state);
    forward_close(&r);
    return rc;
}

/* ---- --op recurrent: gdn_recurrent_forward ------------------------------ */

/* gdn_recurrent_forward on the CUDA backend through device copies; the
 * pool (N slots, identity indices) goes up and comes back. */
static int run_recurrent_cuda(gdn_context *ctx, gdn_problem *p, const gdn_forward_options *opts,
                              const forward_inputs *in, void *pool, gdn_dtype pool_dtype,
                              size_t pool_bytes, int64_t N, gdn_bf16 *o, size_t o_bytes) {
    enum { R_POOL = X_INPUTS, R_O, R_COUNT };
    void *d[R_COUNT] = {0};
    gdn_forward_options dopts;
    int rc;
    if ((rc = forward_inputs_to_device(d, in, 0, opts, &dopts)) ||
        (rc = dev_put(&d[R_POOL], pool, pool_bytes, "state_pool")) ||
        (rc = dev_put(&d[R_O], NULL, o_bytes, "o")))
        goto done;
    p->cu_seqlens_device = (const int32_t *)d[X_CU];
    gdn_status st = gdn_recurrent_forward(ctx, p, &dopts, d[X_Q], d[X_K], d[X_V], d[X_G],
                                          d[X_BETA], d[R_POOL], pool_dtype, N, NULL, d[R_O], NULL);
    p->cu_seqlens_device = NULL;
    if (st != GDN_SUCCESS) {
        rc = cli_lib_error(CMD, "gdn_recurrent_forward", ctx, st);
        goto done;
    }
    if (gdn_dev_sync() != 0 || gdn_dev_download(o, d[R_O], o_bytes) != 0 ||
        gdn_dev_download(pool, d[R_POOL], pool_bytes) != 0)
        rc = cli_error(CLI_FAIL, CMD, "after gdn_recurrent_forward: %s", gdn_dev_error());
done:
    for (int i = 0; i < R_COUNT; i++) gdn_dev_free(d[i]);
    return rc;
}

/* The inputs of --op forward through the recurrent path: a pool of N slots
 * holding h0 (or zeros), sequence n in slot n; final_state.npy is the pool
 * afterwards, as f32. */
static int run_recurrent(const char *in_dir, const char *out_dir, gdn_state_layout layout,
                         gdn_head_map head_map, gdn_backend backend, int device,
                         gdn_forward_options *opts, gdn_dtype pool_dtype) {
    forward_run r;
    gdn_bf16 *o = NULL;
    void *pool = NULL;
    float *final_state = NULL;
    int rc = forward_open(&r, in_dir, layout, head_map, backend, device, opts);
    if (rc) goto done;

    const gdn_problem *p = &r.p;
    const int64_t N = gdn_problem_num_seqs(p), S = p->Hv * p->K * p->V;
    const size_t elem = pool_dtype == GDN_DTYPE_F32 ? sizeof(float) : sizeof(gdn_bf16);
    const size_t o_bytes = (size_t)(p->B * p->T * p->Hv * p->V) * sizeof(gdn_bf16);
    const size_t pool_bytes = (size_t)(N * S) * elem, f_bytes = (size_t)(N * S) * sizeof(float);
    o = (gdn_bf16 *)alloc_out(o_bytes);
    pool = alloc_out(pool_bytes);
    final_state = (float *)alloc_out(f_bytes);
    if (!o || !pool || !final_state) {
        rc = cli_error(CLI_FAIL, CMD, "out of memory for the pool and outputs (%zu bytes)",
                       o_bytes + pool_bytes + f_bytes);
        goto done;
    }
    const forward_inputs *in = &r.in;
    const float *h0 = in->have_h0 ? (const float *)in->h0.data : NULL;
    for (int64_t x = 0; x < N * S; x++) {
        const float f = h0 ? h0[x] : 0.0f;
        if (pool_dtype == GDN_DTYPE_F32)
            ((float *)pool)[x] = f;
        else
            ((gdn_bf16 *)pool)[x] = gdn_f32_to_bf16(f);
    }
    if (gdn_context_backend(r.ctx) == GDN_BACKEND_CUDA) {
        rc = run_recurrent_cuda(r.ctx, &r.p, opts, in, pool, pool_dtype, pool_bytes, N, o,
                                o_bytes);
        if (rc) goto done;
    } else {
        gdn_status st = gdn_recurrent_forward(r.ctx, p, opts, in->q.data, in->k.data, in->v.data,
                                              in->g.data, in->beta.data, pool, pool_dtype, N,
                                              NULL, o, NULL);
        if (st != GDN_SUCCESS) {
            rc = cli_lib_error(CMD, "gdn_recurrent_forward", r.ctx, st);
            goto done;
        }
    }
    for (int64_t x = 0; x < N * S; x++)
        final_state[x] = pool_dtype == GDN_DTYPE_F32 ? ((const float *)pool)[x]
                                                     : gdn_bf16_to_f32(((const gdn_bf16 *)pool)[x]);
    const char *pool_name = pool_dtype == GDN_DTYPE_F32 ? "f32" : "bf16";
    rc = forward_finish(&r, "recurrent", out_dir, opts, pool_name, o, final_state);
done:
    free(o);
    free(pool);
    free(final_state);
    forward_close(&r);
    return rc;
}

int cmd_run(int argc, char **argv) {
    const char *op = NULL, *in_dir = NULL, *out_dir = NULL, *layout_s = "vk",
               *head_map_s = "block", *backend_s = "auto", *device_s = "0", *scale_s = NULL,
               *pool_dtype_s = NULL;
    int l2norm_qk = 0, beta_sigmoid = 0, qwen_gate = 0;
    const cli_opt opts[] = {
        {"op", &op},
        {"in", &in_dir},
        {"out", &out_dir},
        {"state-layout", &layout_s},
        {"head-map", &head_map_s},
        {"backend", &backend_s},
        {"device", &device_s},
        {"scale", &scale_s},
        {"pool-dtype", &pool_dtype_s},
    };
    const cli_flag flags[] = {
        {"l2norm-qk", &l2norm_qk},
        {"beta-sigmoid", &beta_sigmoid},
        {"qwen-gate", &qwen_gate},
    };
    int rc = cli_parse_flags(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), flags,
                             (int)(sizeof flags / sizeof flags[0]));
    if (rc < 0) {
        cli_run_usage(stdout);
        return CLI_OK;
    }
    if (rc) return rc;
    if (!op) return cli_usage_error(CMD, "missing --op (" RUN_OPS ")");
    const int is_state = strcmp(op, "state") == 0, is_forward = strcmp(op, "forward") == 0;
    const int is_recurrent = strcmp(op, "recurrent") == 0;
    if (!is_state && !is_forward && !is_recurrent)
        return cli_usage_error(CMD, "unknown --op '%s' (" RUN_OPS ")", op);
    if (!in_dir)
        return cli_usage_error(CMD, "missing --in DIR (the directory of input .npy files)");
    if (!out_dir) return cli_usage_error(CMD, "missing --out DIR (where the outputs go)");
    gdn_state_layout layout;
    gdn_head_map head_map;
    gdn_backend backend;
    int64_t device;
    if ((rc = cli_state_layout(CMD, layout_s, &layout)) ||
        (rc = cli_head_map(CMD, head_map_s, &head_map)) ||
        (rc = cli_backend(CMD, backend_s, &backend)) ||
        (rc = cli_int(CMD, "device", device_s, 0, 1024, &device)))
        return rc;
    if (pool_dtype_s && !is_recurrent)
        return cli_usage_error(CMD, "--pool-dtype applies to --op recurrent only");
    if (is_state) {
        if (scale_s || l2norm_qk || beta_sigmoid || qwen_gate)
            return cli_usage_error(CMD, "--scale, --l2norm-qk, --beta-sigmoid and --qwen-gate "
                                        "apply to --op forward and recurrent only");
        return run_state(in_dir, out_dir, layout, head_map, backend, (int)device);
    }
    gdn_forward_options fopts;
    gdn_forward_options_init(&fopts);
    if (scale_s) {
        double scale;
        if ((rc = cli_double(CMD, "scale", scale_s, 0.0, &scale))) return rc;
        fopts.scale = (float)scale;
    }
    fopts.l2norm_qk = l2norm_qk;
    fopts.beta_sigmoid = beta_sigmoid;
    fopts.qwen_gate = qwen_gate;
    if (is_recurrent) {
        gdn_dtype pool_dtype = GDN_DTYPE_F32;
        if (pool_dtype_s && strcmp(pool_dtype_s, "bf16") == 0)
            pool_dtype = GDN_DTYPE_BF16;
        else if (pool_dtype_s && strcmp(pool_dtype_s, "f32") != 0)
            return cli_usage_error(CMD, "option '--pool-dtype': '%s' is not f32 or bf16",
                                   pool_dtype_s);
        return run_recurrent(in_dir, out_dir, layout, head_map, backend, (int)device, &fopts,
                             pool_dtype);
    }
    return run_forward(in_dir, out_dir, layout, head_map, backend, (int)device, &fopts);
}

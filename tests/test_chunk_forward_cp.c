/* gdn_chunk_forward_cp on several GPUs (one NCCL rank and one host thread
 * per GPU): B sequences cut into P slices of unequal lengths, not
 * multiples of 64, one slice per GPU; o and the last rank's final state
 * against the fp64 oracle (SPEC 5 bounds) and against the single-GPU
 * gdn_chunk_forward of the whole sequences; every rank's final state is
 * the oracle's state at the end of its slice. Also: options, KV layout,
 * no h0, the wrong-device error. Skips (exit 77) with fewer than two GPUs
 * or without NCCL. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "devbuf.h"
#include "gdn_ref.h"
#include "test_util.h"

#ifdef GDN_TEST_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

static const double BOUND_O = 4e-3, BOUND_FINAL = 3.5e-3;

typedef struct cp_case {
    const char *name;
    int64_t B, T, Hk, Hv, K, V;
    gdn_state_layout layout;
    int with_h0, opts; /* opts: 1 = l2norm + sigmoid + qwen gate */
} cp_case;

/* One rank's job and results. */
typedef struct rank_job {
    int rank, P;
    ncclComm_t comm;
    const gdn_ref_inputs *in;
    const gdn_forward_options *opts; /* host A_log, dt_bias */
    int64_t t0, Tr;                   /* the slice */
    gdn_bf16 *o;                      /* host [B, Tr, Hv, V] */
    float *fs;                        /* host [B, Hv, V, K] */
    gdn_status st;
    char err[512];
} rank_job;

static void *up(const void *src, size_t bytes) {
    void *d = NULL;
    if (gdn_dev_alloc(&d, bytes ? bytes : 1) != 0) return NULL;
    if (src && gdn_dev_upload(d, src, bytes) != 0) return NULL;
    return d;
}

/* Copy rows [t0, t0+Tr) of each batch row of x [B, T, inner] (elem bytes). */
static void *slice_rows(const void *x, int64_t B, int64_t T, int64_t t0, int64_t Tr, int64_t inner,
                        size_t elem) {
    char *out = gdn_test_alloc(B * Tr * inner, elem);
    for (int64_t b = 0; b < B; b++)
        memcpy(out + (size_t)(b * Tr * inner) * elem,
               (const char *)x + (size_t)((b * T + t0) * inner) * elem, (size_t)(Tr * inner) * elem);
    return out;
}

static void *run_rank(void *arg) {
    rank_job *j = (rank_job *)arg;
    const gdn_problem *P = &j->in->p;
    const int64_t B = P->B, T = P->T, Hk = P->Hk, Hv = P->Hv, K = P->K, V = P->V, Tr = j->Tr;
    j->st = GDN_ERROR_INTERNAL;
    if (gdn_dev_set_device(j->rank) != 0) {
        snprintf(j->err, sizeof j->err, "set device: %s", gdn_dev_error());
        return NULL;
    }
    gdn_context *ctx = NULL;
    if (gdn_context_create(&ctx, GDN_BACKEND_CUDA, j->rank) != GDN_SUCCESS) {
        snprintf(j->err, sizeof j->err, "context on device %d", j->rank);
        return NULL;
    }
    gdn_problem p = *P;
    p.T = Tr;
    void *hq = slice_rows(j->in->q, B, T, j->t0, Tr, Hk * K, 2);
    void *hk = slice_rows(j->in->k, B, T, j->t0, Tr, Hk * K, 2);
    void *hv = slice_rows(j->in->v, B, T, j->t0, Tr, Hv * V, 2);
    void *hg = slice_rows(j->in->g, B, T, j->t0, Tr, Hv, 4);
    void *hb = slice_rows(j->in->beta, B, T, j->t0, Tr, Hv, 4);
    const size_t ns = (size_t)(B * Hv * V * K) * 4, no = (size_t)(B * Tr * Hv * V) * 2;
    void *dq = up(hq, (size_t)(B * Tr * Hk * K) * 2), *dk = up(hk, (size_t)(B * Tr * Hk * K) * 2);
    void *dv = up(hv, (size_t)(B * Tr * Hv * V) * 2), *dg = up(hg, (size_t)(B * Tr * Hv) * 4);
    void *db = up(hb, (size_t)(B * Tr * Hv) * 4);
    void *dh = j->in->h0 ? up(j->in->h0, ns) : NULL;
    void *dO = up(NULL, no), *dF = up(NULL, ns);
    gdn_dev_fill(dO, 0xFF, no);
    gdn_dev_fill(dF, 0xFF, ns);
    gdn_forward_options od = *j->opts;
    void *da = NULL, *dd = NULL;
    if (od.qwen_gate) {
        da = up(od.A_log, (size_t)Hv * 4);
        dd = up(od.dt_bias, (size_t)Hv * 4);
        od.A_log = da;
        od.dt_bias = dd;
    }
    size_t wsb = 0;
    void *ws = NULL;
    gdn_status st = gdn_chunk_forward_cp_workspace_size(ctx, &p, &od, j->comm, &wsb);
    if (st == GDN_SUCCESS && wsb) ws = up(NULL, wsb);
    if (st == GDN_SUCCESS)
        st = gdn_chunk_forward_cp(ctx, &p, &od, dq, dk, dv, dg, db, dh, dO, dF, j->comm, ws, wsb);
    if (st != GDN_SUCCESS) snprintf(j->err, sizeof j->err, "%s", gdn_last_error(ctx));
    if (st == GDN_SUCCESS && (gdn_dev_sync() != 0 || gdn_dev_download(j->o, dO, no) != 0 ||
                              gdn_dev_download(j->fs, dF, ns) != 0)) {
        st = GDN_ERROR_CUDA;
        snprintf(j->err, sizeof j->err, "%s", gdn_dev_error());
    }
    j->st = st;
    void *bufs[] = {dq, dk, dv, dg, db, dh, dO, dF, da, dd, ws};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gdn_dev_free(bufs[i]);
    free(hq), free(hk), free(hv), free(hg), free(hb);
    gdn_context_destroy(ctx);
    return NULL;
}

/* The single-GPU forward of the whole sequences on device 0. */
static gdn_status single_gpu(const gdn_ref_inputs *in, const gdn_forward_options *opts,
                             gdn_bf16 *o, float *fs) {
    const gdn_problem *p = &in->p;
    const int64_t tok = p->B * p->T;
    const size_t nqk = (size_t)(tok * p->Hk * p->K) * 2, nv = (size_t)(tok * p->Hv * p->V) * 2;
    const size_t ng = (size_t)(tok * p->Hv) * 4, ns = (size_t)(p->B * p->Hv * p->V * p->K) * 4;
    gdn_dev_set_device(0);
    gdn_context *ctx;
    if (gdn_context_create(&ctx, GDN_BACKEND_CUDA, 0) != GDN_SUCCESS) return GDN_ERROR_INTERNAL;
    void *dq = up(in->q, nqk), *dk = up(in->k, nqk), *dv = up(in->v, nv), *dg = up(in->g, ng);
    void *db = up(in->beta, ng), *dh = in->h0 ? up(in->h0, ns) : NULL;
    void *dO = up(NULL, nv), *dF = up(NULL, ns), *da = NULL, *dd = NULL;
    gdn_forward_options od = *opts;
    if (od.qwen_gate) {
        da = up(od.A_log, (size_t)p->Hv * 4);
        dd = up(od.dt_bias, (size_t)p->Hv * 4);
        od.A_log = da;
        od.dt_bias = dd;
    }
    size_t wsb = 0;
    void *ws = NULL;
    gdn_status st = gdn_chunk_forward_workspace_size(ctx, p, &od, &wsb);
    if (st == GDN_SUCCESS && wsb) ws = up(NULL, wsb);
    if (st == GDN_SUCCESS)
        st = gdn_chunk_forward(ctx, p, &od, dq, dk, dv, dg, db, dh, dO, dF, NULL, ws, wsb);
    if (st == GDN_SUCCESS &&
        (gdn_dev_sync() != 0 || gdn_dev_download(o, dO, nv) || gdn_dev_download(fs, dF, ns)))
        st = GDN_ERROR_CUDA;
    void *bufs[] = {dq, dk, dv, dg, db, dh, dO, dF, da, dd, ws};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gdn_dev_free(bufs[i]);
    gdn_context_destroy(ctx);
    return st;
}

static void check_case(const cp_case *c, int P, const int *devs) {
    gdn_problem shape;
    gdn_problem_init(&shape, c->B, c->T, c->Hk, c->Hv, c->K, c->V);
    shape.state_layout = c->layout;
    gdn_ref_inputs in;
    if (!CHECK(gdn_ref_inputs_make(&in, &shape, 1234 + (uint64_t)c->T, c->with_h0) == 0, "inputs"))
        return;
    const gdn_problem *p = &in.p;
    const int64_t B = p->B, T = p->T, Hv = p->Hv, K = p->K, V = p->V, S = Hv * V * K;
    gdn_forward_options opts;
    gdn_forward_options_init(&opts);
    float A_log[64], dt_bias[64];
    if (c->opts) {
        opts.l2norm_qk = opts.beta_sigmoid = opts.qwen_gate = 1;
        for (int64_t h = 0; h < Hv; h++) A_log[h] = -1.0f + 0.1f * (float)h, dt_bias[h] = 0.05f * (float)h;
        opts.A_log = A_log;
        opts.dt_bias = dt_bias;
    }
    /* unequal cuts, not multiples of 64 */
    int64_t cuts[9];
    cuts[0] = 0;
    for (int r = 1; r < P; r++) cuts[r] = T * r / P + (r % 2 ? 37 : -29);
    cuts[P] = T;
    ncclComm_t comms[8];
    if (!CHECK(ncclCommInitAll(comms, P, devs) == ncclSuccess, "ncclCommInitAll(%d)", P)) return;
    rank_job jobs[8];
    pthread_t th[8];
    for (int r = 0; r < P; r++) {
        jobs[r] = (rank_job){.rank = r, .P = P, .comm = comms[r], .in = &in, .opts = &opts,
                             .t0 = cuts[r], .Tr = cuts[r + 1] - cuts[r]};
        jobs[r].o = gdn_test_alloc(B * jobs[r].Tr * Hv * V, 2);
        jobs[r].fs = gdn_test_alloc(B * S, 4);
        pthread_create(&th[r], NULL, run_rank, &jobs[r]);
    }
    for (int r = 0; r < P; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < P; r++) ncclCommDestroy(comms[r]);

    /* reassemble o; oracle per rank's slice end */
    gdn_bf16 *o = gdn_test_alloc(B * T * Hv * V, 2);
    int ok = 1;
    for (int r = 0; r < P; r++) {
        ok &= CHECK(jobs[r].st == GDN_SUCCESS, "%s P=%d rank %d: %s: %s", c->name, P, r,
                    gdn_status_string(jobs[r].st), jobs[r].err);
        for (int64_t b = 0; b < B; b++)
            memcpy(o + (b * T + cuts[r]) * Hv * V, jobs[r].o + b * jobs[r].Tr * Hv * V,
                   (size_t)(jobs[r].Tr * Hv * V) * 2);
    }
    if (ok) {
        double *ro = gdn_test_alloc(B * T * Hv * V, 8), *rf = gdn_test_alloc(B * S, 8);
        gdn_ref_forward_f64(p, &opts, in.q, in.k, in.v, in.g, in.beta, in.h0, ro, rf, NULL);
        const double eo = gdn_rel_err_bf16(o, ro, B * T * Hv * V);
        const double ef = gdn_rel_err_f32(jobs[P - 1].fs, rf, B * S);
        /* rank r's final state: the oracle over tokens [0, cuts[r+1]) */
        double worst_mid = 0;
        for (int r = 0; r + 1 < P; r++) {
            gdn_problem pre = *p;
            pre.T = cuts[r + 1];
            gdn_bf16 *q2 = slice_rows(in.q, B, T, 0, pre.T, p->Hk * K, 2);
            gdn_bf16 *k2 = slice_rows(in.k, B, T, 0, pre.T, p->Hk * K, 2);
            gdn_bf16 *v2 = slice_rows(in.v, B, T, 0, pre.T, Hv * V, 2);
            float *g2 = slice_rows(in.g, B, T, 0, pre.T, Hv, 4);
            float *b2 = slice_rows(in.beta, B, T, 0, pre.T, Hv, 4);
            double *rm = gdn_test_alloc(B * S, 8);
            gdn_ref_forward_f64(&pre, &opts, q2, k2, v2, g2, b2, in.h0, NULL, rm, NULL);
            worst_mid = fmax(worst_mid, gdn_rel_err_f32(jobs[r].fs, rm, B * S));
            free(q2), free(k2), free(v2), free(g2), free(b2), free(rm);
        }
        gdn_bf16 *o1 = gdn_test_alloc(B * T * Hv * V, 2);
        float *f1 = gdn_test_alloc(B * S, 4);
        CHECK_STATUS(single_gpu(&in, &opts, o1, f1), GDN_SUCCESS, NULL);
        double num = 0, den = 0;
        for (int64_t i = 0; i < B * T * Hv * V; i++) {
            const double a = gdn_bf16_to_f32(o[i]), b = gdn_bf16_to_f32(o1[i]);
            num += (a - b) * (a - b);
            den += b * b;
        }
        const double vs1 = sqrt(num / den);
        const double e1 = gdn_rel_err_bf16(o1, ro, B * T * Hv * V);
        printf("  %-28s P=%d cuts", c->name, P);
        for (int r = 0; r <= P; r++) printf(" %lld", (long long)cuts[r]);
        printf(": o %.2e (1 GPU %.2e, cp vs 1 GPU %.2e)  final %.2e  slice ends %.2e\n", eo, e1,
               vs1, ef, worst_mid);
        CHECK(eo <= BOUND_O, "%s P=%d: o rel err %.3e > %.1e", c->name, P, eo, BOUND_O);
        CHECK(ef <= BOUND_FINAL, "%s P=%d: final rel err %.3e > %.1e", c->name, P, ef, BOUND_FINAL);
        CHECK(worst_mid <= BOUND_FINAL, "%s P=%d: slice-end state rel err %.3e > %.1e", c->name, P,
              worst_mid, BOUND_FINAL);
        CHECK(vs1 <= 2 * BOUND_O, "%s P=%d: cp and single-GPU o differ by %.3e", c->name, P, vs1);
        free(ro), free(rf), free(o1), free(f1);
    }
    for (int r = 0; r < P; r++) free(jobs[r].o), free(jobs[r].fs);
    free(o);
    gdn_ref_inputs_free(&in);
}

/* A communicator on another device than the context is refused by name. */
static void check_wrong_device(void) {
    ncclComm_t comms[2];
    const int devs[2] = {0, 1};
    if (ncclCommInitAll(comms, 2, devs) != ncclSuccess) return;
    gdn_context *ctx;
    gdn_dev_set_device(0);
    if (CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CUDA, 0), GDN_SUCCESS, NULL)) {
        gdn_problem p;
        gdn_problem_init(&p, 1, 100, 1, 1, 64, 64);
        size_t b;
        CHECK_STATUS(gdn_chunk_forward_cp_workspace_size(ctx, &p, NULL, comms[1], &b),
                     GDN_ERROR_INVALID_ARGUMENT, ctx);
        CHECK(strstr(gdn_last_error(ctx), "nccl_comm is on device 1") != NULL, "message: %s",
              gdn_last_error(ctx));
        gdn_context_destroy(ctx);
    }
    ncclCommDestroy(comms[0]);
    ncclCommDestroy(comms[1]);
}
#endif

int main(void) {
#ifndef GDN_TEST_HAVE_NCCL
    printf("SKIP test_chunk_forward_cp: libgdn built without NCCL\n");
    return 77;
#else
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) {
        printf("SKIP test_chunk_forward_cp: needs 2 or more GPUs (found %d)\n", n);
        return 77;
    }
    if (n > 8) n = 8;
    int devs[8];
    for (int i = 0; i < n; i++) devs[i] = i;
    const cp_case cases[] = {
        {"T=1000 K=V=64 h0", 1, 1000, 1, 2, 64, 64, GDN_STATE_VK, 1, 0},
        {"B=2 T=700 K=V=128 opts kv", 2, 700, 2, 4, 128, 128, GDN_STATE_KV, 1, 1},
        {"T=900 K=100 V=64 no h0", 1, 900, 1, 2, 100, 64, GDN_STATE_VK, 0, 0},
    };
    for (int P = 2; P <= n; P *= 2)
        for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i], P, devs);
    if (n > 2 && (n & (n - 1)))
        for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i], n, devs);
    check_wrong_device();
    return gdn_test_finish("test_chunk_forward_cp");
#endif
}

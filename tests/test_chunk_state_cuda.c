/* gdn_chunk_state on the CUDA backend: against the fp64 oracle and the CPU
 * backend on fresh random inputs, outputs poisoned before every run, two
 * runs bitwise identical, the split (segmented) path, unaligned pointers,
 * grids past 65535 blocks, and the CUDA-only validation rules. Exits 77
 * (skipped) with a reason when no GPU is usable. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "devbuf.h"
#include "gdn_ref.h"
#include "test_util.h"

/* Against the fp64 oracle: the CPU backend's bound (see
 * test_chunk_state_cpu.c), the GPU rounds at the same points. Against the
 * CPU backend: only accumulation order differs, which moves a bf16 output
 * by an ulp here and there. */
#define TOL_ORACLE 1e-2
#define TOL_CPU 4e-3

typedef struct dev_case {
    const char *name;
    int64_t B, T, Hk, Hv, K, V;
    gdn_state_layout layout;
    gdn_head_map map;
    int with_h0, with_vnew, with_final;
    const int32_t *cu; /* host cu_seqlens or NULL */
    int64_t num_seqs;
    int pass_cu_device; /* give cu_seqlens_device too */
    int misalign;       /* offset every tensor by 2 bytes (generic load path) */
    int check_oracle;   /* skip the fp64 oracle for the largest cases */
} dev_case;

static gdn_context *cpu_ctx, *gpu_ctx;

/* A device copy of n bytes of host data, placed off bytes into a fresh
 * allocation (for misaligned pointers). */
static void *upload(const void *src, size_t n, size_t off, void **base) {
    if (gdn_dev_alloc(base, n + off) != 0) {
        fprintf(stderr, "%s\n", gdn_dev_error());
        exit(1);
    }
    char *p = (char *)*base + off;
    if (src && gdn_dev_upload(p, src, n) != 0) {
        fprintf(stderr, "%s\n", gdn_dev_error());
        exit(1);
    }
    return p;
}

static void download(void *dst, const void *src, size_t n) {
    if (gdn_dev_sync() != 0 || gdn_dev_download(dst, src, n) != 0) {
        fprintf(stderr, "%s\n", gdn_dev_error());
        exit(1);
    }
}

static void run_case(const dev_case *c, uint64_t seed) {
    const gdn_problem shape = gdn_test_problem(c->B, c->T, c->Hk, c->Hv, c->K, c->V, c->layout,
                                               c->map, c->cu, c->num_seqs);
    gdn_ref_inputs in;
    if (!CHECK(gdn_ref_inputs_make(&in, &shape, seed, c->with_h0) == 0, "%s: inputs", c->name))
        return;
    const gdn_problem *p = &in.p;
    const int64_t BT = c->B * c->T, N = in.N, NT = in.NT;
    const size_t nk = (size_t)BT * c->Hk * c->K, nw = (size_t)BT * c->Hv * c->K;
    const size_t nu = (size_t)BT * c->Hv * c->V, ng = (size_t)BT * c->Hv;
    const size_t nh = (size_t)NT * c->Hv * c->V * c->K, ns = (size_t)N * c->Hv * c->V * c->K;
    const size_t off = c->misalign ? 2 : 0;

    /* CPU reference run (the second reference), and the oracle. */
    gdn_bf16 *h_cpu = gdn_test_alloc(nh, 2), *vn_cpu = gdn_test_alloc(nu, 2);
    float *fs_cpu = gdn_test_alloc(ns, 4);
    CHECK_STATUS(gdn_chunk_state(cpu_ctx, p, in.k, in.w, in.u, in.g_cumsum, in.h0, h_cpu, vn_cpu,
                                 fs_cpu, NULL, 0),
                 GDN_SUCCESS, cpu_ctx);

    void *b_k, *b_w, *b_u, *b_g, *b_h0 = NULL, *b_h, *b_vn = NULL, *b_fs = NULL, *b_ws = NULL,
                                  *b_cu = NULL;
    const gdn_bf16 *dk = upload(in.k, nk * 2, off, &b_k);
    const gdn_bf16 *dw = upload(in.w, nw * 2, off, &b_w);
    const gdn_bf16 *du = upload(in.u, nu * 2, off, &b_u);
    const float *dg = upload(in.g_cumsum, ng * 4, 0, &b_g);
    const float *dh0 = in.h0 ? upload(in.h0, ns * 4, 0, &b_h0) : NULL;
    gdn_bf16 *dh = upload(NULL, nh * 2, off, &b_h);
    gdn_bf16 *dvn = c->with_vnew ? upload(NULL, nu * 2, off, &b_vn) : NULL;
    float *dfs = c->with_final ? upload(NULL, ns * 4, 0, &b_fs) : NULL;
    gdn_problem pd = *p;
    if (c->cu && c->pass_cu_device)
        pd.cu_seqlens_device = upload(in.cu_seqlens, (size_t)(N + 1) * 4, 0, &b_cu);
    size_t ws_bytes = 0;
    CHECK_STATUS(gdn_chunk_state_workspace_size(gpu_ctx, &pd, &ws_bytes), GDN_SUCCESS, gpu_ctx);
    void *ws = ws_bytes ? upload(NULL, ws_bytes, 0, &b_ws) : NULL;
    if (ws_bytes) {
        /* Too small a workspace is refused before any work. */
        CHECK_STATUS(gdn_chunk_state(gpu_ctx, &pd, dk, dw, du, dg, dh0, dh, dvn, dfs, ws,
                                     ws_bytes - 1),
                     GDN_ERROR_WORKSPACE, gpu_ctx);
        CHECK(strstr(gdn_last_error(gpu_ctx), "workspace") != NULL, "%s: workspace message: %s",
              c->name, gdn_last_error(gpu_ctx));
    }

    gdn_bf16 *h1 = gdn_test_alloc(nh, 2), *h2 = gdn_test_alloc(nh, 2);
    gdn_bf16 *vn1 = gdn_test_alloc(nu, 2), *vn2 = gdn_test_alloc(nu, 2);
    float *fs1 = gdn_test_alloc(ns, 4), *fs2 = gdn_test_alloc(ns, 4);
    for (int run = 0; run < 2; run++) {
        gdn_bf16 *ho = run ? h2 : h1, *vo = run ? vn2 : vn1;
        float *fo = run ? fs2 : fs1;
        /* Poison (0xFF = NaN) so any element the kernel misses shows. */
        gdn_dev_fill(dh, 0xFF, nh * 2);
        if (dvn) gdn_dev_fill(dvn, 0xFF, nu * 2);
        if (dfs) gdn_dev_fill(dfs, 0xFF, ns * 4);
        if (ws) gdn_dev_fill(ws, 0xFF, ws_bytes);
        CHECK_STATUS(gdn_chunk_state(gpu_ctx, &pd, dk, dw, du, dg, dh0, dh, dvn, dfs, ws, ws_bytes),
                     GDN_SUCCESS, gpu_ctx);
        download(ho, dh, nh * 2);
        if (dvn) download(vo, dvn, nu * 2);
        if (dfs) download(fo, dfs, ns * 4);
    }

    double e_h = 0, e_vn = 0, e_fs = 0;
    if (c->check_oracle) {
        double *rh = gdn_test_alloc(nh, 8), *rvn = gdn_test_alloc(nu, 8), *rfs = gdn_test_alloc(ns, 8);
        gdn_ref_chunk_state_f64(p, in.k, in.w, in.u, in.g_cumsum, in.h0, rh, rvn, rfs);
        e_h = gdn_rel_err_bf16(h1, rh, (int64_t)nh);
        CHECK(e_h <= TOL_ORACLE, "%s: h_out vs oracle %.3e", c->name, e_h);
        if (dvn) {
            e_vn = gdn_rel_err_bf16(vn1, rvn, (int64_t)nu);
            CHECK(e_vn <= TOL_ORACLE, "%s: v_new vs oracle %.3e", c->name, e_vn);
        }
        if (dfs) {
            e_fs = gdn_rel_err_f32(fs1, rfs, (int64_t)ns);
            CHECK(e_fs <= TOL_ORACLE, "%s: final_state vs oracle %.3e", c->name, e_fs);
        }
        free(rh);
        free(rvn);
        free(rfs);
    }
    /* Against the CPU backend (converted to f64 for the error measure). */
    double *cpu64 = gdn_test_alloc(nh > nu ? (nh > ns ? nh : ns) : (nu > ns ? nu : ns), 8);
    for (size_t i = 0; i < nh; i++) cpu64[i] = gdn_bf16_to_f32(h_cpu[i]);
    double c_h = gdn_rel_err_bf16(h1, cpu64, (int64_t)nh), c_vn = 0, c_fs = 0;
    CHECK(c_h <= TOL_CPU, "%s: h_out vs CPU %.3e", c->name, c_h);
    CHECK(gdn_test_count_nan_bf16(h1, (int64_t)nh) == 0, "%s: h_out has unwritten (NaN) elements",
          c->name);
    if (dvn) {
        for (size_t i = 0; i < nu; i++) cpu64[i] = gdn_bf16_to_f32(vn_cpu[i]);
        c_vn = gdn_rel_err_bf16(vn1, cpu64, (int64_t)nu);
        CHECK(c_vn <= TOL_CPU, "%s: v_new vs CPU %.3e", c->name, c_vn);
        CHECK(gdn_test_count_nan_bf16(vn1, (int64_t)nu) == 0, "%s: v_new has NaN", c->name);
        CHECK(memcmp(vn1, vn2, nu * 2) == 0, "%s: v_new differs between two runs", c->name);
    }
    if (dfs) {
        for (size_t i = 0; i < ns; i++) cpu64[i] = fs_cpu[i];
        c_fs = gdn_rel_err_f32(fs1, cpu64, (int64_t)ns);
        CHECK(c_fs <= TOL_CPU, "%s: final_state vs CPU %.3e", c->name, c_fs);
        CHECK(gdn_test_count_nan_f32(fs1, (int64_t)ns) == 0, "%s: final_state has NaN", c->name);
        CHECK(memcmp(fs1, fs2, ns * 4) == 0, "%s: final_state differs between two runs", c->name);
    }
    CHECK(memcmp(h1, h2, nh * 2) == 0, "%s: h_out differs between two runs", c->name);
    printf("  %-28s oracle h %.2e vn %.2e fs %.2e | cpu h %.2e vn %.2e fs %.2e | ws %zu\n", c->name,
           e_h, e_vn, e_fs, c_h, c_vn, c_fs, ws_bytes);

    free(cpu64);
    free(h_cpu), free(vn_cpu), free(fs_cpu);
    free(h1), free(h2), free(vn1), free(vn2), free(fs1), free(fs2);
    void *bufs[] = {b_k, b_w, b_u, b_g, b_h0, b_h, b_vn, b_fs, b_ws, b_cu};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gdn_dev_free(bufs[i]);
    gdn_ref_inputs_free(&in);
}

/* CUDA-only validation rules: host pointers are refused, by name. */
static void test_host_pointer(void) {
    gdn_problem p;
    gdn_problem_init(&p, 1, 64, 1, 1, 64, 64);
    void *dk, *dw, *du, *dg, *dh;
    gdn_dev_alloc(&dk, 64 * 64 * 2);
    gdn_dev_alloc(&dw, 64 * 64 * 2);
    gdn_dev_alloc(&du, 64 * 64 * 2);
    gdn_dev_alloc(&dg, 64 * 4);
    gdn_dev_alloc(&dh, 64 * 64 * 2);
    gdn_bf16 *host = gdn_test_alloc(64 * 64, 2);
    struct {
        const char *name;
        int which;
    } cases[] = {{"k", 0}, {"w", 1}, {"u", 2}, {"h_out", 3}};
    for (unsigned i = 0; i < 4; i++) {
        const gdn_bf16 *k = cases[i].which == 0 ? host : dk;
        const gdn_bf16 *w = cases[i].which == 1 ? host : dw;
        const gdn_bf16 *u = cases[i].which == 2 ? host : du;
        gdn_bf16 *h = cases[i].which == 3 ? host : dh;
        CHECK_STATUS(gdn_chunk_state(gpu_ctx, &p, k, w, u, dg, NULL, h, NULL, NULL, NULL, 0),
                     GDN_ERROR_INVALID_ARGUMENT, gpu_ctx);
        char want[64];
        snprintf(want, sizeof want, "%s is a host pointer", cases[i].name);
        CHECK(strstr(gdn_last_error(gpu_ctx), want) != NULL, "host %s: message '%s'", cases[i].name,
              gdn_last_error(gpu_ctx));
    }
    /* and the CPU backend refuses device pointers */
    float *hg = gdn_test_alloc(64, 4);
    CHECK_STATUS(gdn_chunk_state(cpu_ctx, &p, dk, host, host, hg, NULL, host, NULL, NULL, NULL, 0),
                 GDN_ERROR_INVALID_ARGUMENT, cpu_ctx);
    CHECK(strstr(gdn_last_error(cpu_ctx), "k is a device pointer") != NULL, "device k on CPU: '%s'",
          gdn_last_error(cpu_ctx));
    free(hg);
    free(host);
    gdn_dev_free(dk), gdn_dev_free(dw), gdn_dev_free(du), gdn_dev_free(dg), gdn_dev_free(dh);
}

int main(void) {
    if (!gdn_dev_available()) {
        printf("test_chunk_state_cuda: SKIPPED: no CUDA device (or libgdn built without CUDA)\n");
        return 77;
    }
    printf("device: %s\n", gdn_dev_name());
    if (!CHECK_STATUS(gdn_context_create(&gpu_ctx, GDN_BACKEND_CUDA, 0), GDN_SUCCESS, NULL) ||
        !CHECK_STATUS(gdn_context_create(&cpu_ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL))
        return gdn_test_finish("test_chunk_state_cuda");

    static const int32_t cu_ragged[] = {0, 0, 1, 64, 64, 129, 300, 300};
    static const int32_t cu_long[] = {0, 700, 700, 2000};
    const dev_case cases[] = {
        /* name               B  T     Hk Hv  K    V   layout        map                 h0 vn fs cu  N  cud mis orc */
        {"t1_k128", 1, 1, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"t63_k64", 1, 63, 1, 2, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"t64_ratio4", 1, 64, 1, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"t1000_k256_ratio2", 1, 1000, 1, 2, 256, 256, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"t65_k100_v36", 1, 65, 2, 4, 100, 36, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"t300_k256", 1, 300, 1, 3, 256, 256, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"t300_kv_tiled", 1, 300, 2, 4, 128, 128, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"b2_t130_k64_v128", 2, 130, 2, 2, 64, 128, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 0, 1, 1, NULL, 0, 0, 0, 1},
        {"t200_k100_v100_kv", 1, 200, 1, 2, 100, 100, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"t1000_optional_null", 1, 1000, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0, 0, NULL, 0, 0, 0, 1},
        {"varlen_ragged", 1, 300, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, cu_ragged, 7, 1, 0, 1},
        {"varlen_ragged_hostcu_kv", 1, 300, 2, 4, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, 1, 1, cu_ragged, 7, 0, 0, 1},
        {"varlen_long", 1, 2000, 1, 2, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, cu_long, 3, 1, 0, 1},
        {"misaligned_k128", 1, 130, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 1, 1},
        /* enough heads that the plan picks 64-row tiles (4 warps a block) */
        {"wide_t130_k256_hv32", 1, 130, 16, 32, 256, 256, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"wide_t130_k128_hv64_kv", 1, 130, 16, 64, 128, 128, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, 1, 1, NULL, 0, 0, 0, 1},
        /* few heads, long sequence: the segmented (split) path */
        {"split_t8192_hv2", 1, 8192, 1, 2, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"split_t5000_kv_k64", 1, 5000, 1, 1, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        {"split_t4100_k256_noh0", 1, 4100, 1, 1, 256, 256, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 1, 1, NULL, 0, 0, 0, 1},
        {"split_t6000_k100", 1, 6000, 1, 2, 100, 100, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, 1, 1, NULL, 0, 0, 0, 1},
        /* K not a multiple of 4: the combine's 4-byte copies of P_s */
        {"split_t6000_k50_v36", 1, 6000, 1, 1, 50, 36, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 1},
        /* more than 65535 blocks in one launch */
        {"grid_hv70000", 1, 2, 1, 70000, 16, 16, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, 1, 1, NULL, 0, 0, 0, 0},
    };
    /* GDN_TEST_QUICK=1 (for compute-sanitizer, which slows kernels a
     * hundredfold) keeps the cases of at most 12000 token-heads: every
     * kernel variant, the split path included, still runs. */
    const int quick = getenv("GDN_TEST_QUICK") && atoi(getenv("GDN_TEST_QUICK"));
    double t0 = gdn_test_seconds();
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (quick && cases[i].B * cases[i].T * cases[i].Hv > 12000) continue;
        run_case(&cases[i], 1000 + i);
    }
    test_host_pointer();
    printf("elapsed %.1f s\n", gdn_test_seconds() - t0);
    gdn_context_destroy(gpu_ctx);
    gdn_context_destroy(cpu_ctx);
    return gdn_test_finish("test_chunk_state_cuda");
}

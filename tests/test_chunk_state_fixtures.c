/* gdn_chunk_state on the CPU versus FLA's own outputs of the same stage
 * (SPEC section 6 fixtures): FLA's inputs k, w, u, g_cumsum, h0_vk in, and
 * h (h_vk), v_new, final state (ht_vk) compared with FLA's. Both sides round
 * at the same points (SPEC 3 step 4), so they differ only by f32
 * accumulation order and the bf16 roundings that order flips: the bound is
 * bf16 tolerance, 4e-3. The fp64 reference on the same inputs is printed
 * alongside (for FLA and for libgdn) to show which side is closer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gdn_ref.h"
#include "test_util.h"

static const double BOUND = 4e-3;
/* Tighter: the same rounding points as FLA give nearly the same bits
 * (measured: v_new identical or 3e-6, h 3e-7 .. 3.7e-5, final 6e-8 ..
 * 2.2e-5, from f32 summation order). A variant that rounds elsewhere (e.g.
 * gates bf16(v_new) instead of the f32 value) lands near 1e-3 and fails
 * this; such a variant must say so (SPEC 3) and change this check. */
static const double BOUND_SAME_ROUNDING = 2e-4;

static void run_case(gdn_context *ctx, const char *root, const gdn_test_fixture *c) {
    const int64_t B = c->B, T = c->T, Hk = c->Hk, Hv = c->Hv, K = c->K, V = c->V;
    const int64_t NTb = (T + 63) / 64;
    npy_array k, w, u, g, h0, h_vk, v_new, ht_vk;
    gdn_test_npy_file files[] = {
        {"k.npy", "<u2", 4, {B, T, Hk, K}, &k},
        {"w.npy", "<u2", 4, {B, T, Hv, K}, &w},
        {"u.npy", "<u2", 4, {B, T, Hv, V}, &u},
        {"g_cumsum.npy", "<f4", 3, {B, T, Hv}, &g},
        {"h0_vk.npy", "<f4", 4, {B, Hv, V, K}, &h0},
        {"h_vk.npy", "<u2", 5, {B, NTb, Hv, V, K}, &h_vk},
        {"v_new.npy", "<u2", 4, {B, T, Hv, V}, &v_new},
        {"ht_vk.npy", "<f4", 4, {B, Hv, V, K}, &ht_vk},
    };
    const int n_files = (int)(sizeof files / sizeof files[0]);
    if (!gdn_test_load_fixture(root, c, files, n_files)) return;

    gdn_problem p;
    gdn_problem_init(&p, B, T, Hk, Hv, K, V);
    const int64_t n_h = B * NTb * Hv * V * K, n_v = B * T * Hv * V, n_f = B * Hv * V * K;
    gdn_bf16 *o_h = gdn_test_alloc_poisoned(n_h, sizeof(gdn_bf16));
    gdn_bf16 *o_v = gdn_test_alloc_poisoned(n_v, sizeof(gdn_bf16));
    float *o_f = gdn_test_alloc_poisoned(n_f, sizeof(float));
    CHECK_STATUS(
        gdn_chunk_state(ctx, &p, k.data, w.data, u.data, g.data, h0.data, o_h, o_v, o_f, NULL, 0),
        GDN_SUCCESS, ctx);

    double *fla_h = gdn_test_npy_to_f64(&h_vk), *fla_v = gdn_test_npy_to_f64(&v_new);
    double *fla_f = gdn_test_npy_to_f64(&ht_vk);
    const double eh = gdn_rel_err_bf16(o_h, fla_h, n_h);
    const double ev = gdn_rel_err_bf16(o_v, fla_v, n_v);
    const double ef = gdn_rel_err_f32(o_f, fla_f, n_f);
    printf("%s: libgdn vs FLA: h %.3e  v_new %.3e  final_state %.3e  (bound %.1e)\n", c->name, eh,
           ev, ef, BOUND);
    CHECK(eh <= BOUND, "%s: h vs FLA's h_vk: rel err %.3e > %.1e", c->name, eh, BOUND);
    CHECK(ev <= BOUND, "%s: v_new vs FLA's v_new: rel err %.3e > %.1e", c->name, ev, BOUND);
    CHECK(ef <= BOUND, "%s: final state vs FLA's ht_vk: rel err %.3e > %.1e", c->name, ef, BOUND);
    const double worst = fmax(eh, fmax(ev, ef));
    CHECK(worst <= BOUND_SAME_ROUNDING,
          "%s: libgdn vs FLA %.3e > %.1e: not FLA's rounding points (SPEC 3 step 4)", c->name,
          worst, BOUND_SAME_ROUNDING);

    /* For the record: both against the fp64 reference of this stage. */
    double *rh = gdn_test_alloc(n_h, sizeof(double));
    double *rv = gdn_test_alloc(n_v, sizeof(double));
    double *rf = gdn_test_alloc(n_f, sizeof(double));
    gdn_ref_chunk_state_f64(&p, k.data, w.data, u.data, g.data, h0.data, rh, rv, rf);
    printf("%s: libgdn vs fp64: h %.3e  v_new %.3e  final_state %.3e\n", c->name,
           gdn_rel_err_bf16(o_h, rh, n_h), gdn_rel_err_bf16(o_v, rv, n_v),
           gdn_rel_err_f32(o_f, rf, n_f));
    printf("%s: FLA    vs fp64: h %.3e  v_new %.3e  final_state %.3e\n", c->name,
           gdn_rel_err_f64(fla_h, rh, n_h), gdn_rel_err_f64(fla_v, rv, n_v),
           gdn_rel_err_f64(fla_f, rf, n_f));

    free(rh);
    free(rv);
    free(rf);
    free(fla_h);
    free(fla_v);
    free(fla_f);
    free(o_h);
    free(o_v);
    free(o_f);
    gdn_test_free_fixture(files, n_files);
}

int main(void) {
    const char *root = gdn_test_fixtures_checked();
    if (!root) return gdn_test_finish("test_chunk_state_fixtures");
    gdn_context *ctx = NULL;
    if (!CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL))
        return gdn_test_finish("test_chunk_state_fixtures");
    for (int i = 0; i < gdn_test_num_fixtures; i++) run_case(ctx, root, &gdn_test_fixtures[i]);
    gdn_context_destroy(ctx);
    return gdn_test_finish("test_chunk_state_fixtures");
}

/* One test per validation rule of the public API (src/problem.c,
 * src/chunk_state.c, src/context.c): the status returned AND that
 * gdn_last_error() names the argument. The rule "host pointer passed to
 * the CUDA backend" needs a GPU and is tested in test_chunk_state_cuda. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "gdn_ref.h"
#include "test_util.h"

/* A small valid problem and its buffers; tests break one thing at a time. */
enum { T0 = 70, HK0 = 1, HV0 = 2, K0 = 8, V0 = 8, NT0 = 2 };
static gdn_bf16 k_buf[T0 * HK0 * K0], w_buf[T0 * HV0 * K0], u_buf[T0 * HV0 * V0];
static float g_buf[T0 * HV0], h0_buf[HV0 * V0 * K0], fs_buf[HV0 * V0 * K0];
static gdn_bf16 h_buf[NT0 * HV0 * V0 * K0], vn_buf[T0 * HV0 * V0];

typedef struct call {
    const gdn_bf16 *k, *w, *u;
    const float *g, *h0;
    gdn_bf16 *h_out, *v_new;
    float *final_state;
} call;

static call valid_call(void) {
    call c = {k_buf, w_buf, u_buf, g_buf, h0_buf, h_buf, vn_buf, fs_buf};
    return c;
}

static void valid_problem(gdn_problem *p) { gdn_problem_init(p, 1, T0, HK0, HV0, K0, V0); }

static gdn_status run(gdn_context *ctx, const gdn_problem *p, const call *c) {
    return gdn_chunk_state(ctx, p, c->k, c->w, c->u, c->g, c->h0, c->h_out, c->v_new,
                           c->final_state, NULL, 0);
}

/* The call fails with want, and the message holds every one of the
 * (NULL-terminated) substrings. */
static void expect_msg(gdn_context *ctx, gdn_status got, gdn_status want, const char *rule,
                       const char *const *subs) {
    CHECK(got == want, "%s: returned %s, expected %s (%s)", rule, gdn_status_string(got),
          gdn_status_string(want), gdn_last_error(ctx));
    for (const char *const *s = subs; *s; s++)
        CHECK(strstr(gdn_last_error(ctx), *s) != NULL, "%s: message \"%s\" lacks \"%s\"", rule,
              gdn_last_error(ctx), *s);
}

#define EXPECT(ctx, expr, want, rule, ...)                                                         \
    do {                                                                                           \
        const char *const subs_[] = {__VA_ARGS__, NULL};                                           \
        expect_msg((ctx), (expr), (want), (rule), subs_);                                          \
    } while (0)

#define BAD GDN_ERROR_INVALID_ARGUMENT
#define OP "gdn_chunk_state"

static void test_null_ctx_and_problem(gdn_context *ctx) {
    gdn_problem p;
    valid_problem(&p);
    call c = valid_call();
    CHECK_STATUS(run(NULL, &p, &c), BAD, NULL);
    size_t bytes = 1;
    CHECK_STATUS(gdn_chunk_state_workspace_size(NULL, &p, &bytes), BAD, NULL);
    CHECK(strstr(gdn_last_error(NULL), "NULL") != NULL, "gdn_last_error(NULL): \"%s\"",
          gdn_last_error(NULL));
    EXPECT(ctx, run(ctx, NULL, &c), BAD, "problem NULL", OP, "problem");
}

static void test_required_pointers(gdn_context *ctx) {
    gdn_problem p;
    valid_problem(&p);
    call c;
    c = valid_call(), c.k = NULL;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "k NULL", OP, ": k is NULL");
    c = valid_call(), c.w = NULL;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "w NULL", OP, ": w is NULL");
    c = valid_call(), c.u = NULL;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "u NULL", OP, ": u is NULL");
    c = valid_call(), c.g = NULL;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "g NULL", OP, ": g is NULL");
    c = valid_call(), c.h_out = NULL;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "h_out NULL", OP, ": h_out is NULL");
    /* the optional ones may be NULL */
    c = valid_call(), c.h0 = NULL, c.v_new = NULL, c.final_state = NULL;
    CHECK_STATUS(run(ctx, &p, &c), GDN_SUCCESS, ctx);
}

static void test_dims(gdn_context *ctx) {
    static const char *const names[] = {"B", "T", "Hk", "Hv", "K", "V"};
    const int64_t values[] = {0, -1, INT64_MIN};
    for (int d = 0; d < 6; d++) {
        for (int v = 0; v < 3; v++) {
            gdn_problem p;
            valid_problem(&p);
            int64_t *dim[] = {&p.B, &p.T, &p.Hk, &p.Hv, &p.K, &p.V};
            *dim[d] = values[v];
            call c = valid_call();
            char want[64], rule[64];
            snprintf(want, sizeof want, " %s (%lld) must be >= 1", names[d], (long long)values[v]);
            snprintf(rule, sizeof rule, "%s = %lld", names[d], (long long)values[v]);
            EXPECT(ctx, run(ctx, &p, &c), BAD, rule, OP, want);
        }
    }
}

static void test_head_rules(gdn_context *ctx) {
    gdn_problem p;
    call c = valid_call();
    gdn_problem_init(&p, 1, T0, 4, 6, K0, V0);
    EXPECT(ctx, run(ctx, &p, &c), BAD, "Hv % Hk", OP, "Hv (6) must be a multiple of Hk (4)");
    gdn_problem_init(&p, 1, T0, 2, 1, K0, V0);
    EXPECT(ctx, run(ctx, &p, &c), BAD, "Hk > Hv", OP, "Hv (1) must be a multiple of Hk (2)");
    gdn_problem_init(&p, 1, T0, 1, 1, 257, V0);
    EXPECT(ctx, run(ctx, &p, &c), BAD, "K > 256", OP, " K (257) must be <= 256");
    gdn_problem_init(&p, 1, T0, 1, 1, K0, 1000);
    EXPECT(ctx, run(ctx, &p, &c), BAD, "V > 256", OP, " V (1000) must be <= 256");
}

static void test_enums(gdn_context *ctx) {
    gdn_problem p;
    call c = valid_call();
    valid_problem(&p);
    p.state_layout = (gdn_state_layout)2;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "state_layout 2", OP, "state_layout (2)");
    p.state_layout = (gdn_state_layout)-1;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "state_layout -1", OP, "state_layout (-1)");
    valid_problem(&p);
    p.head_map = (gdn_head_map)7;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "head_map 7", OP, "head_map (7)");
}

static void test_overflow(gdn_context *ctx) {
    gdn_problem p;
    call c = valid_call();
    /* B * T itself */
    gdn_problem_init(&p, (int64_t)1 << 40, (int64_t)1 << 40, 1, 1, K0, V0);
    EXPECT(ctx, run(ctx, &p, &c), BAD, "B*T overflow", OP, "B * T", "overflows");
    /* the activations' byte count: 2^60 tokens x 2 heads x 8 x 4 bytes */
    gdn_problem_init(&p, 1, (int64_t)1 << 60, 1, 2, K0, V0);
    EXPECT(ctx, run(ctx, &p, &c), BAD, "activation overflow", OP, "tensor size", "overflows");
    /* the state tensors: 2^52 tokens -> 2^46 chunks x 256 x 256 x 4 bytes */
    gdn_problem_init(&p, 1, (int64_t)1 << 52, 1, 1, 256, 256);
    EXPECT(ctx, run(ctx, &p, &c), BAD, "state overflow", OP, "state tensor size", "overflows");
    /* T huge, through the workspace query too */
    size_t bytes = 7;
    gdn_problem_init(&p, 1, INT64_MAX, 1, 1, K0, V0);
    EXPECT(ctx, gdn_chunk_state_workspace_size(ctx, &p, &bytes), BAD, "T = INT64_MAX",
           "gdn_chunk_state_workspace_size", "overflows");
}

static void test_cu_seqlens(gdn_context *ctx) {
    gdn_problem p;
    call c = valid_call();
    c.h0 = NULL; /* the buffers hold one sequence's state */
    c.final_state = NULL;
    const int32_t good[] = {0, 0, 30, 30, T0};

    valid_problem(&p);
    p.cu_seqlens = good;
    p.num_seqs = 4;
    CHECK_STATUS(run(ctx, &p, &c), GDN_SUCCESS, ctx); /* the baseline is valid */

    p.cu_seqlens_device = good; /* on the CPU any pointer kind is taken as host */
    p.cu_seqlens = NULL;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "cu_seqlens_device without cu_seqlens", OP,
           "cu_seqlens_device", "cu_seqlens");

    valid_problem(&p);
    p.cu_seqlens = good;
    p.num_seqs = 4;
    p.B = 2;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "B != 1 with cu_seqlens", OP, "B (2) must be 1",
           "cu_seqlens");

    p.B = 1;
    p.num_seqs = 0;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "num_seqs 0", OP, "num_seqs (0)");
    p.num_seqs = -3;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "num_seqs -3", OP, "num_seqs (-3)");

    const int32_t start1[] = {1, 30, T0};
    p.cu_seqlens = start1;
    p.num_seqs = 2;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "cu_seqlens[0] != 0", OP, "cu_seqlens[0] (1) must be 0");

    const int32_t decreasing[] = {0, 40, 30, T0};
    p.cu_seqlens = decreasing;
    p.num_seqs = 3;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "cu_seqlens decreasing", OP, "non-decreasing",
           "cu_seqlens[2] (30) < cu_seqlens[1] (40)");

    const int32_t short_end[] = {0, 30, T0 - 1};
    p.cu_seqlens = short_end;
    p.num_seqs = 2;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "cu_seqlens not ending at T", OP, "must equal T (70)");
    const int32_t long_end[] = {0, 30, T0 + 5};
    p.cu_seqlens = long_end;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "cu_seqlens past T", OP, "must equal T (70)");

    p.cu_seqlens = good;
    p.num_seqs = 4;
    p.T = (int64_t)INT32_MAX + 1;
    EXPECT(ctx, run(ctx, &p, &c), BAD, "T > INT32_MAX with cu_seqlens", OP, "T (", "int32");
}

static void test_workspace_size(gdn_context *ctx) {
    gdn_problem p;
    valid_problem(&p);
    EXPECT(ctx, gdn_chunk_state_workspace_size(ctx, &p, NULL), BAD, "bytes NULL",
           "gdn_chunk_state_workspace_size", "bytes");
    size_t bytes = 123;
    CHECK_STATUS(gdn_chunk_state_workspace_size(ctx, &p, &bytes), GDN_SUCCESS, ctx);
    CHECK(bytes == 0, "CPU workspace size is %zu, expected 0", bytes);
    bytes = 123;
    EXPECT(ctx, gdn_chunk_state_workspace_size(ctx, NULL, &bytes), BAD, "workspace problem NULL",
           "gdn_chunk_state_workspace_size", "problem");
    CHECK(bytes == 0, "workspace size not zeroed on failure (%zu)", bytes);
    p.K = 0;
    EXPECT(ctx, gdn_chunk_state_workspace_size(ctx, &p, &bytes), BAD, "workspace K = 0",
           "gdn_chunk_state_workspace_size", " K (0)");
    /* the CPU backend takes (and ignores) a workspace */
    valid_problem(&p);
    char ws[16];
    CHECK_STATUS(gdn_chunk_state(ctx, &p, k_buf, w_buf, u_buf, g_buf, h0_buf, h_buf, vn_buf, fs_buf,
                                 ws, sizeof ws),
                 GDN_SUCCESS, ctx);
}

static void test_context(void) {
    gdn_context *ctx = (gdn_context *)&ctx; /* must be overwritten with NULL on failure */
    CHECK_STATUS(gdn_context_create(NULL, GDN_BACKEND_CPU, 0), BAD, NULL);
    CHECK_STATUS(gdn_context_create(&ctx, (gdn_backend)9, 0), BAD, NULL);
    CHECK(ctx == NULL, "a failed create leaves *ctx non-NULL");
    if (!gdn_cuda_available()) {
        ctx = (gdn_context *)&ctx;
        CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CUDA, 0), GDN_ERROR_NOT_SUPPORTED, NULL);
        CHECK(ctx == NULL, "a failed CUDA create leaves *ctx non-NULL");
        CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_AUTO, 0), GDN_SUCCESS, NULL);
        CHECK(gdn_context_backend(ctx) == GDN_BACKEND_CPU, "AUTO without CUDA is not CPU");
        gdn_context_destroy(ctx);
    } else {
        CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_AUTO, 0), GDN_SUCCESS, NULL);
        CHECK(gdn_context_backend(ctx) == GDN_BACKEND_CUDA, "AUTO with CUDA is not CUDA");
        gdn_context_destroy(ctx);
    }
    gdn_context_destroy(NULL); /* a no-op */
    CHECK(gdn_context_backend(NULL) == GDN_BACKEND_AUTO, "backend(NULL) is not AUTO");

    CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL);
    CHECK(gdn_context_backend(ctx) == GDN_BACKEND_CPU, "CPU context is not CPU");
    CHECK(strcmp(gdn_last_error(ctx), "") == 0, "fresh context has an error \"%s\"",
          gdn_last_error(ctx));
    int dummy;
    EXPECT(ctx, gdn_context_set_stream(ctx, &dummy), BAD, "stream on CPU", "gdn_context_set_stream",
           "stream", "CPU");
    CHECK_STATUS(gdn_context_set_stream(ctx, NULL), GDN_SUCCESS, ctx);
    CHECK_STATUS(gdn_context_set_stream(NULL, NULL), BAD, NULL);
    EXPECT(ctx, gdn_context_set_num_threads(ctx, -1), BAD, "num_threads -1",
           "gdn_context_set_num_threads", "num_threads (-1)");
    CHECK_STATUS(gdn_context_set_num_threads(ctx, 0), GDN_SUCCESS, ctx);
    CHECK_STATUS(gdn_context_set_num_threads(ctx, 2), GDN_SUCCESS, ctx);
    CHECK_STATUS(gdn_context_set_num_threads(NULL, 1), BAD, NULL);
    gdn_context_destroy(ctx);
}

static void test_status_strings(void) {
    const struct {
        gdn_status s;
        const char *name;
    } all[] = {
        {GDN_SUCCESS, "GDN_SUCCESS"},
        {GDN_ERROR_INVALID_ARGUMENT, "GDN_ERROR_INVALID_ARGUMENT"},
        {GDN_ERROR_NOT_SUPPORTED, "GDN_ERROR_NOT_SUPPORTED"},
        {GDN_ERROR_OUT_OF_MEMORY, "GDN_ERROR_OUT_OF_MEMORY"},
        {GDN_ERROR_WORKSPACE, "GDN_ERROR_WORKSPACE"},
        {GDN_ERROR_CUDA, "GDN_ERROR_CUDA"},
        {GDN_ERROR_INTERNAL, "GDN_ERROR_INTERNAL"},
    };
    for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++)
        CHECK(strcmp(gdn_status_string(all[i].s), all[i].name) == 0, "status %d: \"%s\"",
              (int)all[i].s, gdn_status_string(all[i].s));
    const char *unknown = gdn_status_string((gdn_status)99);
    CHECK(unknown != NULL && strlen(unknown) > 0, "unknown status gives no string");
}

static void test_problem_helpers(void) {
    gdn_problem_init(NULL, 1, 1, 1, 1, 1, 1); /* a no-op */
    gdn_problem p;
    gdn_problem_init(&p, 3, 130, 2, 4, 64, 32);
    CHECK(p.cu_seqlens == NULL && p.cu_seqlens_device == NULL && p.state_layout == GDN_STATE_VK &&
              p.head_map == GDN_HEAD_MAP_BLOCK,
          "gdn_problem_init defaults");
    CHECK(gdn_problem_num_seqs(&p) == 3, "num_seqs without cu_seqlens");
    CHECK(gdn_problem_num_chunks(&p) == 9, "num_chunks: %lld",
          (long long)gdn_problem_num_chunks(&p));
    const int32_t cu[] = {0, 0, 64, 65, 200};
    p.B = 1;
    p.T = 200;
    p.cu_seqlens = cu;
    p.num_seqs = 4;
    CHECK(gdn_problem_num_seqs(&p) == 4, "num_seqs with cu_seqlens");
    CHECK(gdn_problem_num_chunks(&p) == 0 + 1 + 1 + 3, "num_chunks varlen: %lld",
          (long long)gdn_problem_num_chunks(&p));
    const int32_t bad[] = {0, 10, 5};
    p.cu_seqlens = bad;
    p.num_seqs = 2;
    CHECK(gdn_problem_num_chunks(&p) == -1, "num_chunks of invalid cu_seqlens is not -1");
    CHECK(gdn_problem_num_chunks(NULL) == -1 && gdn_problem_num_seqs(NULL) == -1,
          "NULL problem helpers");
}

/* A failed call leaves a message; the next valid call clears it. */
static void test_error_cleared(gdn_context *ctx) {
    gdn_problem p;
    valid_problem(&p);
    call c = valid_call();
    p.K = 0;
    CHECK_STATUS(run(ctx, &p, &c), BAD, ctx);
    CHECK(gdn_last_error(ctx)[0] != '\0', "no message after a failure");
    p.K = K0;
    CHECK_STATUS(run(ctx, &p, &c), GDN_SUCCESS, ctx);
    CHECK(strcmp(gdn_last_error(ctx), "") == 0, "message \"%s\" kept after a success",
          gdn_last_error(ctx));
    CHECK_STATUS(gdn_context_set_num_threads(ctx, -5), BAD, ctx);
    size_t bytes;
    CHECK_STATUS(gdn_chunk_state_workspace_size(ctx, &p, &bytes), GDN_SUCCESS, ctx);
    CHECK(strcmp(gdn_last_error(ctx), "") == 0, "workspace_size kept the old message \"%s\"",
          gdn_last_error(ctx));
}

int main(void) {
    /* Inputs for the calls that are expected to succeed. */
    gdn_problem p;
    valid_problem(&p);
    gdn_ref_inputs in;
    if (!CHECK(gdn_ref_inputs_make(&in, &p, 3, 1) == 0, "inputs_make"))
        return gdn_test_finish("test_validation");
    memcpy(k_buf, in.k, sizeof k_buf);
    memcpy(w_buf, in.w, sizeof w_buf);
    memcpy(u_buf, in.u, sizeof u_buf);
    memcpy(g_buf, in.g_cumsum, sizeof g_buf);
    memcpy(h0_buf, in.h0, sizeof h0_buf);
    gdn_ref_inputs_free(&in);

    gdn_context *ctx = NULL;
    if (!CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL))
        return gdn_test_finish("test_validation");
    call c = valid_call();
    CHECK_STATUS(run(ctx, &p, &c), GDN_SUCCESS, ctx); /* the baseline is valid */

    test_null_ctx_and_problem(ctx);
    test_required_pointers(ctx);
    test_dims(ctx);
    test_head_rules(ctx);
    test_enums(ctx);
    test_overflow(ctx);
    test_cu_seqlens(ctx);
    test_workspace_size(ctx);
    test_error_cleared(ctx);
    test_context();
    test_status_strings();
    test_problem_helpers();
    gdn_context_destroy(ctx);
    return gdn_test_finish("test_validation");
}

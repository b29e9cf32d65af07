/* One test per validation rule of the public API (src/problem.c,
 * src/chunk_state.c, src/chunk_forward.c, src/recurrent_forward.c,
 * src/context.c): the status returned AND that gdn_last_error() names
 * the argument. The rule "host pointer passed to the CUDA backend" needs a
 * GPU and is tested in test_chunk_state_cuda (and here for
 * gdn_chunk_forward and gdn_recurrent_forward, with a GPU). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devbuf.h"
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

/* No message on ctx (when: a fresh context, or a success after a failure,
 * which must clear the failure's message). */
static void expect_no_message(gdn_context *ctx, const char *when) {
    CHECK(strcmp(gdn_last_error(ctx), "") == 0, "%s: gdn_last_error is \"%s\", expected \"\"",
          when, gdn_last_error(ctx));
}

#define EXPECT(ctx, expr, want, rule, ...)                                                         \
    do {                                                                                           \
        const char *const subs_[] = {__VA_ARGS__, NULL};                                           \
        expect_msg((ctx), (expr), (want), (rule), subs_);                                          \
    } while (0)

#define BAD GDN_ERROR_INVALID_ARGUMENT

/* A required pointer NULL: with c = valid() but c.field NULL (c, ctx and p
 * from the caller), run refuses the call and the message names the pointer;
 * the rule is "<prefix>field NULL". */
#define EXPECT_NULL(prefix, op, run, valid, field)                                                 \
    do {                                                                                           \
        c = valid(), c.field = NULL;                                                               \
        EXPECT(ctx, run(ctx, &p, &c), BAD, prefix #field " NULL", op, ": " #field " is NULL");     \
    } while (0)

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
    EXPECT_NULL("", OP, run, valid_call, k);
    EXPECT_NULL("", OP, run, valid_call, w);
    EXPECT_NULL("", OP, run, valid_call, u);
    EXPECT_NULL("", OP, run, valid_call, g);
    EXPECT_NULL("", OP, run, valid_call, h_out);
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
    expect_no_message(ctx, "a fresh context");
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
    expect_no_message(ctx, "a success after a failure");
    CHECK_STATUS(gdn_context_set_num_threads(ctx, -5), BAD, ctx);
    size_t bytes;
    CHECK_STATUS(gdn_chunk_state_workspace_size(ctx, &p, &bytes), GDN_SUCCESS, ctx);
    expect_no_message(ctx, "workspace_size after a failure");
}

/* ---- gdn_chunk_forward ---------------------------------------------------- */

static gdn_bf16 q_buf[T0 * HK0 * K0], v_buf[T0 * HV0 * V0], o_buf[T0 * HV0 * V0];
static float beta_buf[T0 * HV0], cs_buf[NT0 * HV0 * V0 * K0], alog_buf[HV0], dtb_buf[HV0];

#define OPF "gdn_chunk_forward"
#define OPF_WS "gdn_chunk_forward_workspace_size"

typedef struct fcall {
    const gdn_forward_options *opts;
    const gdn_bf16 *q, *k, *v;
    const float *g, *beta, *h0;
    gdn_bf16 *o;
    float *final_state, *chunk_states;
} fcall;

static fcall valid_fcall(void) {
    fcall c = {NULL, q_buf, k_buf, v_buf, g_buf, beta_buf, h0_buf, o_buf, fs_buf, cs_buf};
    return c;
}

static gdn_status frun(gdn_context *ctx, const gdn_problem *p, const fcall *c) {
    return gdn_chunk_forward(ctx, p, c->opts, c->q, c->k, c->v, c->g, c->beta, c->h0, c->o,
                             c->final_state, c->chunk_states, NULL, 0);
}

static void test_chunk_forward(gdn_context *ctx) {
    /* inputs: q = k, v = u, g the (<= 0) cumsum values, beta 0.5, the gate
     * parameters of a plausible Qwen3-Next layer */
    memcpy(q_buf, k_buf, sizeof q_buf);
    memcpy(v_buf, u_buf, sizeof v_buf);
    for (int i = 0; i < T0 * HV0; i++) beta_buf[i] = 0.5f;
    for (int h = 0; h < HV0; h++) {
        alog_buf[h] = -1.0f;
        dtb_buf[h] = 0.5f;
    }
    gdn_problem p;
    valid_problem(&p);
    fcall c = valid_fcall();
    CHECK_STATUS(frun(ctx, &p, &c), GDN_SUCCESS, ctx); /* the baseline is valid */

    CHECK_STATUS(frun(NULL, &p, &c), BAD, NULL);
    EXPECT(ctx, frun(ctx, NULL, &c), BAD, "forward: problem NULL", OPF, "problem");
    /* the problem rules come through, named for this op */
    p.K = 0;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: K = 0", OPF, " K (0) must be >= 1");
    valid_problem(&p);
    p.head_map = (gdn_head_map)5;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: head_map 5", OPF, "head_map (5)");
    valid_problem(&p);
    const int32_t cu_bad[] = {0, 40, T0 - 1};
    p.cu_seqlens = cu_bad;
    p.num_seqs = 2;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: cu_seqlens end", OPF, "must equal T (70)");
    valid_problem(&p);

    /* required pointers */
    EXPECT_NULL("forward: ", OPF, frun, valid_fcall, q);
    EXPECT_NULL("forward: ", OPF, frun, valid_fcall, k);
    EXPECT_NULL("forward: ", OPF, frun, valid_fcall, v);
    EXPECT_NULL("forward: ", OPF, frun, valid_fcall, g);
    EXPECT_NULL("forward: ", OPF, frun, valid_fcall, beta);
    EXPECT_NULL("forward: ", OPF, frun, valid_fcall, o);
    /* the optional ones may be NULL */
    c = valid_fcall(), c.h0 = NULL, c.final_state = NULL, c.chunk_states = NULL;
    CHECK_STATUS(frun(ctx, &p, &c), GDN_SUCCESS, ctx);

    /* options */
    gdn_forward_options o;
    c = valid_fcall();
    c.opts = &o;
    gdn_forward_options_init(&o);
    CHECK_STATUS(frun(ctx, &p, &c), GDN_SUCCESS, ctx);
    const float bad_scales[] = {NAN, INFINITY, -INFINITY, -0.5f};
    const char *const bad_scale_names[] = {"nan", "inf", "-inf", "-0.5"};
    for (int i = 0; i < 4; i++) {
        gdn_forward_options_init(&o);
        o.scale = bad_scales[i];
        char rule[64], want[64];
        snprintf(rule, sizeof rule, "forward: scale %s", bad_scale_names[i]);
        snprintf(want, sizeof want, "opts->scale (%s)", bad_scale_names[i]);
        EXPECT(ctx, frun(ctx, &p, &c), BAD, rule, OPF, want, "finite and >= 0");
    }
    gdn_forward_options_init(&o);
    o.scale = 0.25f;
    CHECK_STATUS(frun(ctx, &p, &c), GDN_SUCCESS, ctx);
    gdn_forward_options_init(&o);
    o.l2norm_qk = 2;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: l2norm_qk 2", OPF,
           "opts->l2norm_qk (2) must be 0 or 1");
    gdn_forward_options_init(&o);
    o.beta_sigmoid = -1;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: beta_sigmoid -1", OPF,
           "opts->beta_sigmoid (-1) must be 0 or 1");
    gdn_forward_options_init(&o);
    o.qwen_gate = 7;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: qwen_gate 7", OPF,
           "opts->qwen_gate (7) must be 0 or 1");
    gdn_forward_options_init(&o);
    o.qwen_gate = 1;
    o.dt_bias = dtb_buf;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: qwen_gate without A_log", OPF,
           "opts->A_log is NULL", "qwen_gate");
    o.A_log = alog_buf;
    o.dt_bias = NULL;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: qwen_gate without dt_bias", OPF,
           "opts->dt_bias is NULL", "qwen_gate");
    o.dt_bias = dtb_buf;
    o.l2norm_qk = 1;
    o.beta_sigmoid = 1;
    CHECK_STATUS(frun(ctx, &p, &c), GDN_SUCCESS, ctx); /* every option on */
    /* A_log / dt_bias without the gate are ignored */
    gdn_forward_options_init(&o);
    o.A_log = alog_buf;
    CHECK_STATUS(frun(ctx, &p, &c), GDN_SUCCESS, ctx);
    /* the problem is checked before the options */
    gdn_forward_options_init(&o);
    o.l2norm_qk = 9;
    p.V = 0;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward: V = 0 and bad options", OPF, " V (0)");
    valid_problem(&p);

    /* workspace size */
    size_t bytes = 5;
    CHECK_STATUS(gdn_chunk_forward_workspace_size(NULL, &p, NULL, &bytes), BAD, NULL);
    EXPECT(ctx, gdn_chunk_forward_workspace_size(ctx, &p, NULL, NULL), BAD, "forward ws: bytes",
           OPF_WS, "bytes");
    CHECK_STATUS(gdn_chunk_forward_workspace_size(ctx, &p, NULL, &bytes), GDN_SUCCESS, ctx);
    CHECK(bytes == 0, "CPU forward workspace size is %zu, expected 0", bytes);
    bytes = 5;
    EXPECT(ctx, gdn_chunk_forward_workspace_size(ctx, NULL, NULL, &bytes), BAD,
           "forward ws: problem NULL", OPF_WS, "problem");
    CHECK(bytes == 0, "forward workspace size not zeroed on failure (%zu)", bytes);
    gdn_forward_options_init(&o);
    o.scale = -1.0f;
    EXPECT(ctx, gdn_chunk_forward_workspace_size(ctx, &p, &o, &bytes), BAD,
           "forward ws: bad scale", OPF_WS, "opts->scale");
    /* the CPU backend takes (and ignores) a workspace */
    char ws[16];
    c = valid_fcall();
    CHECK_STATUS(gdn_chunk_forward(ctx, &p, NULL, c.q, c.k, c.v, c.g, c.beta, c.h0, c.o,
                                   c.final_state, c.chunk_states, ws, sizeof ws),
                 GDN_SUCCESS, ctx);
    /* a failure's message is cleared by the next success */
    c.q = NULL;
    CHECK_STATUS(frun(ctx, &p, &c), BAD, ctx);
    c.q = q_buf;
    CHECK_STATUS(frun(ctx, &p, &c), GDN_SUCCESS, ctx);
    expect_no_message(ctx, "gdn_chunk_forward after a failure");
}

static void cuda_teardown(gdn_context *ctx, int n, void **d) {
    for (int i = 0; i < n; i++) gdn_dev_free(d[i]);
    gdn_context_destroy(ctx);
}

/* For the CUDA-only checks of op: a CUDA context and n device buffers of
 * the given sizes in d (zeroed by the caller), a counted check each. NULL
 * (with nothing left to free) without a GPU, after a note, or when a check
 * failed. */
static gdn_context *cuda_setup(const char *op, int n, const size_t *bytes, void **d) {
    if (!gdn_cuda_available()) {
        printf("note: no GPU: the CUDA %s checks were skipped\n", op);
        return NULL;
    }
    gdn_context *ctx = NULL;
    if (!CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CUDA, 0), GDN_SUCCESS, NULL)) return NULL;
    for (int i = 0; i < n; i++)
        if (!CHECK(gdn_dev_alloc(&d[i], bytes[i]) == 0, "device buffer: %s", gdn_dev_error())) {
            cuda_teardown(ctx, n, d);
            return NULL;
        }
    return ctx;
}

/* On a CUDA context: validated (the workspace too), then run on the
 * device, never on the CPU; test_chunk_forward_cuda checks the results. */
static void test_chunk_forward_cuda(void) {
    enum { Q, KK, VV, G, BETA, H0, O, FS, CS, COUNT };
    const size_t bytes[COUNT] = {sizeof q_buf, sizeof k_buf,  sizeof v_buf,
                                 sizeof g_buf, sizeof beta_buf, sizeof h0_buf,
                                 sizeof o_buf, sizeof fs_buf, sizeof cs_buf};
    void *d[COUNT] = {0};
    gdn_context *ctx = cuda_setup(OPF, COUNT, bytes, d);
    if (!ctx) return;
    gdn_problem p;
    valid_problem(&p);
    size_t ws = 7;
    CHECK_STATUS(gdn_chunk_forward_workspace_size(ctx, &p, NULL, &ws), GDN_SUCCESS, ctx);
    CHECK(ws > 0, "forward on CUDA: workspace size 0");
    /* the size does not depend on where A_log and dt_bias live */
    gdn_forward_options qo;
    gdn_forward_options_init(&qo);
    qo.qwen_gate = 1;
    qo.A_log = qo.dt_bias = beta_buf; /* host pointers */
    size_t ws_q = 0;
    CHECK_STATUS(gdn_chunk_forward_workspace_size(ctx, &p, &qo, &ws_q), GDN_SUCCESS, ctx);
    CHECK(ws_q == ws, "forward on CUDA: workspace size %zu with the gate, %zu without", ws_q, ws);
    const fcall dc = {NULL, d[Q], d[KK], d[VV], d[G], d[BETA], d[H0], d[O], d[FS], d[CS]};
    fcall c = dc;
    EXPECT(ctx, frun(ctx, &p, &c), GDN_ERROR_WORKSPACE, "forward on CUDA: no workspace", OPF,
           "workspace", "gdn_chunk_forward_workspace_size");
    /* device memory starts as garbage: zero inputs, then a real run */
    for (int i = Q; i <= H0; i++) gdn_dev_fill(d[i], 0, bytes[i]);
    void *wsd = NULL;
    if (CHECK(gdn_dev_alloc(&wsd, ws) == 0, "workspace: %s", gdn_dev_error())) {
        CHECK_STATUS(gdn_chunk_forward(ctx, &p, NULL, d[Q], d[KK], d[VV], d[G], d[BETA], d[H0],
                                       d[O], d[FS], d[CS], wsd, ws),
                     GDN_SUCCESS, ctx);
        CHECK(gdn_dev_sync() == 0, "forward on CUDA: %s", gdn_dev_error());
        EXPECT(ctx,
               gdn_chunk_forward(ctx, &p, &qo, d[Q], d[KK], d[VV], d[G], d[BETA], d[H0], d[O],
                                 d[FS], d[CS], wsd, ws),
               BAD, "forward on CUDA: host A_log", OPF, "opts->A_log is a host pointer");
        gdn_dev_free(wsd);
    }
    /* validation still comes first */
    c = dc, c.beta = NULL;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward on CUDA: beta NULL", OPF, ": beta is NULL");
    c = dc, c.q = q_buf;
    EXPECT(ctx, frun(ctx, &p, &c), BAD, "forward on CUDA: host q", OPF, "q is a host pointer");
    cuda_teardown(ctx, COUNT, d);
}

/* ---- gdn_recurrent_forward ------------------------------------------------ */

/* Four sequences over the T0 tokens, a pool of four slots. */
enum { RP0 = 4, RN0 = 4 };
static const int32_t r_cu[RN0 + 1] = {0, 10, 30, 31, T0};
static float r_beta[T0 * HV0], r_pool[RP0 * HV0 * V0 * K0], r_hist[T0 * HV0 * V0 * K0];
static gdn_bf16 r_o[T0 * HV0 * V0], r_v[T0 * HV0 * V0];
static int32_t r_idx[RN0];

#define OPR "gdn_recurrent_forward"

typedef struct rcall {
    const gdn_forward_options *opts;
    const gdn_bf16 *q, *k, *v;
    const float *g, *beta;
    void *state_pool;
    gdn_dtype dtype;
    int64_t pool_size;
    const int32_t *idx;
    gdn_bf16 *o;
    void *hist;
} rcall;

static rcall valid_rcall(void) {
    static const int32_t idx[RN0] = {2, -1, 0, 3};
    memcpy(r_idx, idx, sizeof r_idx);
    rcall c = {NULL, k_buf, k_buf, r_v, g_buf, r_beta, r_pool, GDN_DTYPE_F32, RP0, r_idx, r_o,
               r_hist};
    return c;
}

static void valid_rproblem(gdn_problem *p) {
    valid_problem(p);
    p->cu_seqlens = r_cu;
    p->num_seqs = RN0;
}

static gdn_status rrun(gdn_context *ctx, const gdn_problem *p, const rcall *c) {
    return gdn_recurrent_forward(ctx, p, c->opts, c->q, c->k, c->v, c->g, c->beta, c->state_pool,
                                 c->dtype, c->pool_size, c->idx, c->o, c->hist);
}

/* A rejected call wrote nothing: o still poisoned, the pool as it was. */
static void expect_untouched(const char *rule, const float *pool_before) {
    int o_poisoned = 1;
    const unsigned char *b = (const unsigned char *)r_o;
    for (size_t i = 0; i < sizeof r_o; i++) o_poisoned &= b[i] == 0xFF;
    CHECK(o_poisoned, "%s: o was written before the error", rule);
    CHECK(memcmp(pool_before, r_pool, sizeof r_pool) == 0, "%s: the pool was written before the "
          "error", rule);
}

static void test_recurrent_forward(gdn_context *ctx) {
    memcpy(r_v, u_buf, sizeof r_v);
    for (int i = 0; i < T0 * HV0; i++) r_beta[i] = 0.5f;
    for (size_t i = 0; i < sizeof r_pool / sizeof r_pool[0]; i++)
        r_pool[i] = 0.01f * (float)(i % 17);
    gdn_problem p;
    valid_rproblem(&p);
    rcall c = valid_rcall();
    CHECK_STATUS(rrun(ctx, &p, &c), GDN_SUCCESS, ctx); /* the baseline is valid */

    CHECK_STATUS(rrun(NULL, &p, &c), BAD, NULL);
    EXPECT(ctx, rrun(ctx, NULL, &c), BAD, "recurrent: problem NULL", OPR, "problem");
    /* the problem rules come through, named for this op */
    p.V = 0;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: V = 0", OPR, " V (0) must be >= 1");
    valid_rproblem(&p);
    const int32_t cu_bad[] = {0, 10, 30, 31, T0 + 1};
    p.cu_seqlens = cu_bad;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: cu_seqlens end", OPR, "must equal T (70)");
    valid_rproblem(&p);

    /* required pointers; state_indices and state_history may be NULL */
    EXPECT_NULL("recurrent: ", OPR, rrun, valid_rcall, q);
    EXPECT_NULL("recurrent: ", OPR, rrun, valid_rcall, k);
    EXPECT_NULL("recurrent: ", OPR, rrun, valid_rcall, v);
    EXPECT_NULL("recurrent: ", OPR, rrun, valid_rcall, g);
    EXPECT_NULL("recurrent: ", OPR, rrun, valid_rcall, beta);
    EXPECT_NULL("recurrent: ", OPR, rrun, valid_rcall, state_pool);
    EXPECT_NULL("recurrent: ", OPR, rrun, valid_rcall, o);
    c = valid_rcall(), c.idx = NULL, c.hist = NULL;
    CHECK_STATUS(rrun(ctx, &p, &c), GDN_SUCCESS, ctx);

    /* the shared option rules, named for this op */
    gdn_forward_options o;
    c = valid_rcall();
    c.opts = &o;
    gdn_forward_options_init(&o);
    o.scale = NAN;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: scale nan", OPR, "opts->scale (nan)");
    gdn_forward_options_init(&o);
    o.beta_sigmoid = 3;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: beta_sigmoid 3", OPR,
           "opts->beta_sigmoid (3) must be 0 or 1");
    gdn_forward_options_init(&o);
    o.qwen_gate = 1;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: qwen_gate without A_log", OPR,
           "opts->A_log is NULL", "qwen_gate");
    gdn_forward_options_init(&o);
    o.l2norm_qk = 1;
    CHECK_STATUS(rrun(ctx, &p, &c), GDN_SUCCESS, ctx);

    /* pool_dtype and pool_size */
    c = valid_rcall(), c.dtype = (gdn_dtype)7;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: pool_dtype 7", OPR, "pool_dtype (7)",
           "GDN_DTYPE_F32 or GDN_DTYPE_BF16");
    c.dtype = (gdn_dtype)-1;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: pool_dtype -1", OPR, "pool_dtype (-1)");
    c = valid_rcall(), c.pool_size = 0;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: pool_size 0", OPR,
           "pool_size (0) must be >= 1");
    c.pool_size = -3;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: pool_size -3", OPR, "pool_size (-3)");
    c.pool_size = INT64_MAX / 64;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: pool overflow", OPR, "state_pool size",
           "overflows");
    /* the history's size: B*T*Hv*V*K*4 overflows where the problem's own
     * tensors still fit */
    gdn_problem big;
    gdn_problem_init(&big, 1, (int64_t)1 << 55, HK0, HV0, K0, V0);
    c = valid_rcall();
    EXPECT(ctx, rrun(ctx, &big, &c), BAD, "recurrent: history overflow", OPR,
           "state_history size", "overflows");

    /* the slots: each rule rejected before anything is written */
    float pool_before[sizeof r_pool / sizeof r_pool[0]];
    memcpy(pool_before, r_pool, sizeof r_pool);
    c = valid_rcall();
    r_idx[2] = RP0;
    gdn_test_poison(r_o, sizeof r_o);
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: index == P", OPR,
           "state_indices[2] (4) must be < pool_size (4)");
    expect_untouched("index == P", pool_before);
    r_idx[2] = INT32_MAX;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: index INT32_MAX", OPR,
           "state_indices[2] (2147483647)");
    expect_untouched("index INT32_MAX", pool_before);
    c = valid_rcall();
    r_idx[3] = 2; /* sequence 0 uses slot 2 too */
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: duplicate index", OPR,
           "state_indices[0] and state_indices[3] both name pool slot 2", "distinct");
    expect_untouched("duplicate index", pool_before);
    c.dtype = GDN_DTYPE_BF16; /* the same rules on a bf16 pool */
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: duplicate index, bf16", OPR,
           "both name pool slot 2");
    expect_untouched("duplicate index, bf16", pool_before);
    c = valid_rcall(), c.idx = NULL, c.pool_size = RN0 - 1;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent: NULL indices, small pool", OPR,
           "state_indices is NULL", "pool_size (3) must be >= the number of sequences (4)");
    expect_untouched("NULL indices, small pool", pool_before);
    /* repeated padding is fine, and so is a pool larger than needed */
    c = valid_rcall();
    r_idx[0] = -1;
    r_idx[2] = -7;
    CHECK_STATUS(rrun(ctx, &p, &c), GDN_SUCCESS, ctx);
    expect_no_message(ctx, "gdn_recurrent_forward after a failure");
}

/* On a CUDA context: validated (including the rules only CUDA has), then
 * run on the device (never on the CPU); test_recurrent_forward_cuda checks
 * the results. */
static void test_recurrent_forward_cuda(void) {
    enum { Q, G, BETA, VV, POOL, IDX, O, HIST, CU, COUNT };
    const size_t bytes[COUNT] = {sizeof k_buf,  sizeof g_buf, sizeof r_beta,
                                 sizeof r_v,    sizeof r_pool, sizeof r_idx,
                                 sizeof r_o,    sizeof r_hist, sizeof r_cu};
    void *d[COUNT] = {0};
    gdn_context *ctx = cuda_setup(OPR, COUNT, bytes, d);
    if (!ctx) return;
    gdn_problem p;
    valid_rproblem(&p);
    p.cu_seqlens_device = (const int32_t *)d[CU];
    const rcall dc = {NULL, d[Q], d[Q], d[VV], d[G], d[BETA], d[POOL], GDN_DTYPE_F32, RP0,
                      d[IDX], d[O], d[HIST]};
    rcall c = dc;
    /* device memory starts as garbage: real cu_seqlens and indices (7 is
     * past the pool: padding on CUDA), zero inputs and pool */
    static const int32_t idx[RN0] = {2, -1, 0, 7};
    const int up = gdn_dev_upload(d[CU], r_cu, sizeof r_cu) == 0 &&
                   gdn_dev_upload(d[IDX], idx, sizeof idx) == 0;
    for (int i = Q; i <= POOL; i++)
        if (i != IDX) gdn_dev_fill(d[i], 0, bytes[i]);
    CHECK(up, "device upload: %s", gdn_dev_error());
    CHECK_STATUS(rrun(ctx, &p, &c), GDN_SUCCESS, ctx);
    CHECK(gdn_dev_sync() == 0, "recurrent on CUDA: %s", gdn_dev_error());
    /* validation comes first */
    c = dc, c.state_pool = r_pool;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent on CUDA: host pool", OPR,
           "state_pool is a host pointer");
    c = dc, c.idx = r_idx;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent on CUDA: host indices", OPR,
           "state_indices is a host pointer");
    c = dc;
    p.cu_seqlens_device = NULL;
    EXPECT(ctx, rrun(ctx, &p, &c), BAD, "recurrent on CUDA: no cu_seqlens_device", OPR,
           "cu_seqlens_device");
    cuda_teardown(ctx, COUNT, d);
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
    test_chunk_forward(ctx);
    test_chunk_forward_cuda();
    test_recurrent_forward(ctx);
    test_recurrent_forward_cuda();
    gdn_context_destroy(ctx);
    return gdn_test_finish("test_validation");
}

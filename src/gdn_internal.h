/* Shared internals: the context, error reporting, validated arguments and
 * the backend entry points that the public calls dispatch to. */
#ifndef GDN_INTERNAL_H
#define GDN_INTERNAL_H

#include <stdint.h>

#include "gdn.h"

#ifdef __cplusplus
extern "C" {
#endif

struct gdn_context {
    gdn_backend backend;
    int device;
    void *stream;
    int num_threads;
    int sm_count;           /* CUDA: multiprocessors */
    size_t smem_optin;      /* CUDA: largest dynamic shared memory per block */
    int cc_major;           /* CUDA: compute capability, major (9: Hopper's tensor copies) */
    char error[512];
};

/* Record a formatted message on ctx and return status (ctx may be NULL). */
gdn_status gdn_fail(gdn_context *ctx, gdn_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void gdn_clear_error(gdn_context *ctx);

/* Key head read by value head h. */
static inline int64_t gdn_key_head(const gdn_problem *p, int64_t h) {
    return p->head_map == GDN_HEAD_MAP_TILED ? h % p->Hk : h / (p->Hv / p->Hk);
}

/* Sequence bounds: tokens [*bos, *eos) of sequence n in the flattened
 * [B*T] token axis. */
static inline void gdn_seq_bounds(const gdn_problem *p, int64_t n, int64_t *bos, int64_t *eos) {
    if (p->cu_seqlens) {
        *bos = p->cu_seqlens[n];
        *eos = p->cu_seqlens[n + 1];
    } else {
        *bos = n * p->T;
        *eos = *bos + p->T;
    }
}

static inline int64_t gdn_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* a * b into *out; 0 on int64 overflow (operands are >= 0). */
static inline int gdn_mul_ok(int64_t a, int64_t b, int64_t *out) {
    if (a != 0 && b > INT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* Validates the problem description alone (dims, enums, cu_seqlens,
 * overflow). op names the calling operation in messages. */
gdn_status gdn_validate_problem(gdn_context *ctx, const char *op, const gdn_problem *p);

/* Pointer checks: required non-NULL, and of the kind the backend needs. */
typedef struct gdn_ptr_arg {
    const char *name;
    const void *ptr;
    int required;
} gdn_ptr_arg;
gdn_status gdn_validate_pointers(gdn_context *ctx, const char *op, const gdn_ptr_arg *args,
                                 int count);

/* The caller's workspace (workspace_bytes at workspace) against the need
 * bytes of a backend; size_fn names the function that reports the size. */
gdn_status gdn_validate_workspace(gdn_context *ctx, const char *op, const char *size_fn,
                                  const void *workspace, size_t workspace_bytes, size_t need);

/* Validated arguments of gdn_chunk_state, with the derived sizes. */
typedef struct gdn_chunk_state_args {
    const gdn_problem *p;
    int64_t N;  /* sequences */
    int64_t NT; /* chunks over all sequences */
    const gdn_bf16 *k, *w, *u;
    const float *g, *h0;
    gdn_bf16 *h_out, *v_new;
    float *final_state;
    void *workspace;
    size_t workspace_bytes;
} gdn_chunk_state_args;

gdn_status gdn_cpu_chunk_state(gdn_context *ctx, const gdn_chunk_state_args *a);

/* Validated arguments of gdn_recurrent_forward, options resolved. */
typedef struct gdn_recurrent_forward_args {
    const gdn_problem *p;
    gdn_forward_options opts; /* resolved: scale explicit */
    int64_t N;                /* sequences */
    const gdn_bf16 *q, *k, *v;
    const float *g, *beta;
    void *state_pool;
    gdn_dtype pool_dtype;
    int64_t pool_size;
    const int32_t *state_indices; /* NULL = identity */
    gdn_bf16 *o;
    void *state_history;
} gdn_recurrent_forward_args;

gdn_status gdn_cpu_recurrent_forward(gdn_context *ctx, const gdn_recurrent_forward_args *a);

/* gdn_forward_options checked and resolved: opts may be NULL (defaults);
 * on success *out holds the options with the scale made explicit
 * (1/sqrt(K) for 0). Checks: scale finite and >= 0, the flags 0 or 1,
 * A_log and dt_bias given (and, unless out is NULL - a workspace-size
 * query, which reads neither - of the backend's pointer kind) with
 * qwen_gate. Messages start with op and name the field ("opts->scale"). */
gdn_status gdn_validate_forward_options(gdn_context *ctx, const char *op, const gdn_problem *p,
                                        const gdn_forward_options *opts,
                                        gdn_forward_options *out);

/* Validated arguments of gdn_chunk_forward, with the derived sizes. */
typedef struct gdn_chunk_forward_args {
    const gdn_problem *p;
    gdn_forward_options opts; /* resolved: scale > 0 or as given */
    int64_t N;                /* sequences */
    int64_t NT;               /* chunks over all sequences */
    const gdn_bf16 *q, *k, *v;
    const float *g, *beta, *h0;
    gdn_bf16 *o;
    float *final_state, *chunk_states;
    float *transition; /* gdn_chunk_forward_summary: [N,Hv,K,K]; final_state holds partial */
    void *workspace;
    size_t workspace_bytes;
} gdn_chunk_forward_args;

gdn_status gdn_cpu_chunk_forward(gdn_context *ctx, const gdn_chunk_forward_args *a);

/* What the forward family's workspace-size queries check first: bytes not
 * NULL (then set to 0), the problem, the options. */
gdn_status gdn_validate_size_query(gdn_context *ctx, const char *op, const gdn_problem *p,
                                   const gdn_forward_options *opts, size_t *bytes);
/* *a for problem p (N, NT derived) with the options validated and
 * resolved; the caller fills in the tensors. */
gdn_status gdn_forward_args_init(gdn_context *ctx, const char *op, const gdn_problem *p,
                                 const gdn_forward_options *opts, gdn_chunk_forward_args *a);
/* The slice summary (transition, partial) of gdn_chunk_forward_summary. */
gdn_status gdn_cpu_chunk_forward_summary(gdn_context *ctx, const gdn_chunk_forward_args *a);
/* gdn_state_advance on the CPU (arguments validated). */
gdn_status gdn_cpu_state_advance(gdn_context *ctx, const gdn_problem *p, const float *state_in,
                                 const float *transition, const float *partial, float *state_out);

/* CUDA backend (src/cuda); stubs that report NOT_SUPPORTED when not built. */
gdn_status gdn_cuda_context_init(gdn_context *ctx, int device);
int gdn_cuda_device_count(void);
typedef enum gdn_memory_kind {
    GDN_MEMORY_UNKNOWN = 0, /* CUDA not built: taken as host memory */
    GDN_MEMORY_HOST,        /* pageable, or pinned host memory */
    GDN_MEMORY_DEVICE,      /* device memory, only the GPU can read it */
    GDN_MEMORY_MANAGED      /* managed: both sides can read it */
} gdn_memory_kind;
gdn_memory_kind gdn_cuda_pointer_kind(const void *ptr);
gdn_status gdn_cuda_set_stream(gdn_context *ctx, void *stream);
size_t gdn_cuda_chunk_state_workspace_size(const gdn_context *ctx, const gdn_problem *p);
gdn_status gdn_cuda_chunk_state(gdn_context *ctx, const gdn_chunk_state_args *a);
gdn_status gdn_cuda_recurrent_forward(gdn_context *ctx, const gdn_recurrent_forward_args *a);
size_t gdn_cuda_chunk_forward_workspace_size(const gdn_context *ctx, const gdn_problem *p);
gdn_status gdn_cuda_chunk_forward(gdn_context *ctx, const gdn_chunk_forward_args *a);
size_t gdn_cuda_chunk_forward_summary_workspace_size(const gdn_context *ctx, const gdn_problem *p);
gdn_status gdn_cuda_chunk_forward_summary(gdn_context *ctx, const gdn_chunk_forward_args *a);
/* gdn_chunk_forward_cp (built with NCCL; else NOT_SUPPORTED): nccl_comm
 * is an ncclComm_t. The size is 0 when the communicator cannot be read. */
gdn_status gdn_cuda_chunk_forward_cp_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                    void *nccl_comm, size_t *bytes);
gdn_status gdn_cuda_chunk_forward_cp(gdn_context *ctx, const gdn_chunk_forward_args *a,
                                     void *nccl_comm);
gdn_status gdn_cuda_state_advance(gdn_context *ctx, const gdn_problem *p, const float *state_in,
                                  const float *transition, const float *partial, float *state_out);

#ifdef __cplusplus
}
#endif
#endif

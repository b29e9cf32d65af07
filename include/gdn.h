/*
 * gdn.h - libgdn, Gated DeltaNet kernels for CPUs and NVIDIA GPUs.
 *
 * The whole public API. Conventions, shared by every operation:
 *
 *  - Every call returns a gdn_status. On failure the context keeps a
 *    message naming the argument and the rule it broke: gdn_last_error().
 *  - Tensors are dense, row-major, innermost dimension last, as listed per
 *    operation. bf16 tensors are passed as raw bf16 bit patterns (gdn_bf16,
 *    the upper 16 bits of an IEEE float32).
 *  - Pointers are host pointers for the CPU backend and device pointers
 *    (cudaMalloc, or managed) for the CUDA backend; the library checks this
 *    and refuses the wrong kind. The exception: gdn_problem.cu_seqlens is
 *    always a host array (the library validates it before any work).
 *  - CUDA calls are asynchronous on the context's stream. They do not
 *    allocate and do not synchronise the host when cu_seqlens_device is
 *    given (or there is no cu_seqlens), so they can be captured in a graph.
 *  - Results are deterministic: no atomics, the same bits on every run.
 *
 * See ../shared/SPEC.md in the project for the math.
 */
#ifndef GDN_H
#define GDN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(GDN_SHARED_BUILD)
#define GDN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define GDN_API __attribute__((visibility("default")))
#else
#define GDN_API
#endif

#define GDN_VERSION_MAJOR 0
#define GDN_VERSION_MINOR 1
#define GDN_VERSION_PATCH 0

/* Chunk length of the chunked algorithm (SPEC section 3). */
#define GDN_CHUNK 64
/* Largest supported head dimension, K and V alike. */
#define GDN_MAX_HEAD_DIM 256

/* Raw bf16 bits. */
typedef uint16_t gdn_bf16;

typedef enum gdn_status {
    GDN_SUCCESS = 0,
    GDN_ERROR_INVALID_ARGUMENT = 1, /* a shape, pointer, layout or cu_seqlens rule broken */
    GDN_ERROR_NOT_SUPPORTED = 2,    /* backend not built, or no usable device */
    GDN_ERROR_OUT_OF_MEMORY = 3,    /* a host allocation failed (CPU backend) */
    GDN_ERROR_WORKSPACE = 4,        /* workspace missing or smaller than required */
    GDN_ERROR_CUDA = 5,             /* a CUDA runtime call or launch failed */
    GDN_ERROR_INTERNAL = 6
} gdn_status;

typedef enum gdn_backend {
    GDN_BACKEND_AUTO = 0, /* CUDA when built and a device is present, else CPU */
    GDN_BACKEND_CPU = 1,
    GDN_BACKEND_CUDA = 2
} gdn_backend;

/* Layout of every recurrent state tensor (h0, h_out, final_state). */
typedef enum gdn_state_layout {
    GDN_STATE_VK = 0, /* [.., V, K], K innermost: vLLM, FlashInfer, the seed (default) */
    GDN_STATE_KV = 1  /* [.., K, V], V innermost: FLA's default; holds S^T */
} gdn_state_layout;

/* Which key head value head h reads (r = Hv / Hk). */
typedef enum gdn_head_map {
    GDN_HEAD_MAP_BLOCK = 0, /* key head h / r: FLA, HF transformers (default) */
    GDN_HEAD_MAP_TILED = 1  /* key head h % Hk: GGUF / llama.cpp head order */
} gdn_head_map;

typedef struct gdn_context gdn_context;

/* Short name of a status ("GDN_ERROR_INVALID_ARGUMENT", ...). Never NULL. */
GDN_API const char *gdn_status_string(gdn_status status);

/* Create a context. backend AUTO picks CUDA when it was built and a device
 * exists. device is the CUDA device index (ignored for CPU). The context
 * starts on the default stream (NULL) and, for CPU, all available threads. */
GDN_API gdn_status gdn_context_create(gdn_context **ctx, gdn_backend backend, int device);
/* Destroy a context; NULL is a no-op. */
GDN_API void gdn_context_destroy(gdn_context *ctx);
/* The backend the context runs on (CPU or CUDA, never AUTO). */
GDN_API gdn_backend gdn_context_backend(const gdn_context *ctx);
/* CUDA: the cudaStream_t later calls run on (NULL = default stream).
 * CPU: only NULL is accepted. */
GDN_API gdn_status gdn_context_set_stream(gdn_context *ctx, void *stream);
/* CPU: number of threads (0 = all available). CUDA: ignored. */
GDN_API gdn_status gdn_context_set_num_threads(gdn_context *ctx, int num_threads);
/* The message of the last failed call on ctx ("" after a success). */
GDN_API const char *gdn_last_error(const gdn_context *ctx);
/* 1 when the library was built with CUDA and at least one device is usable. */
GDN_API int gdn_cuda_available(void);

/*
 * The problem description every operation takes.
 *
 * Tokens come as a batch of B sequences of length T, or (cu_seqlens != NULL)
 * as B = 1 and N = num_seqs sequences packed along T: sequence n is tokens
 * [cu_seqlens[n], cu_seqlens[n+1]). cu_seqlens has N+1 int32 entries, starts
 * at 0, never decreases and ends at T; empty sequences are allowed (their
 * final state is their h0). Without cu_seqlens, N = B.
 *
 * cu_seqlens is a host array. The CUDA backend needs the same values on the
 * device: pass them as cu_seqlens_device to avoid a host-to-device copy (and
 * to make the call capturable in a CUDA graph); otherwise the library copies
 * them into the workspace on the stream. The caller guarantees both hold the
 * same values.
 */
typedef struct gdn_problem {
    int64_t B, T;   /* batch, tokens per batch row */
    int64_t Hk, Hv; /* key heads, value heads; Hv % Hk == 0 */
    int64_t K, V;   /* head dims, each 1..GDN_MAX_HEAD_DIM */
    const int32_t *cu_seqlens;        /* host, N+1 entries, or NULL */
    const int32_t *cu_seqlens_device; /* CUDA, optional copy of cu_seqlens */
    int64_t num_seqs;                 /* N; used only with cu_seqlens */
    gdn_state_layout state_layout;
    gdn_head_map head_map;
} gdn_problem;

/* Fill *p with the given shape and the defaults: no cu_seqlens, V-first
 * states, block head mapping. */
GDN_API void gdn_problem_init(gdn_problem *p, int64_t B, int64_t T, int64_t Hk, int64_t Hv,
                              int64_t K, int64_t V);
/* Number of sequences: num_seqs with cu_seqlens, else B. */
GDN_API int64_t gdn_problem_num_seqs(const gdn_problem *p);
/* Total number of chunks NT over all sequences: sum of ceil(len_n / 64)
 * (B * ceil(T / 64) without cu_seqlens). This is the chunk dimension of
 * h_out. Returns -1 if cu_seqlens is set but invalid. */
GDN_API int64_t gdn_problem_num_chunks(const gdn_problem *p);

/*
 * gdn_chunk_state: the inter-chunk state recurrence (SPEC section 3 step 4
 * and section 4) - the serial step of the chunked forward.
 *
 * Inputs (NT = gdn_problem_num_chunks, N = gdn_problem_num_seqs):
 *   k            [B, T, Hk, K]  bf16   keys
 *   w            [B, T, Hv, K]  bf16   WY-transformed keys
 *   u            [B, T, Hv, V]  bf16   WY-transformed values
 *   g            [B, T, Hv]     f32    chunk-local cumulative log-decay
 *   h0           [N, Hv, V, K]  f32    initial state, optional (NULL = 0)
 * Outputs:
 *   h_out        [NT, Hv, V, K] bf16   state at each chunk start; without
 *                                      cu_seqlens this is [B, T/64.., Hv, V, K];
 *                                      with it, all sequences' chunks in order
 *   v_new        [B, T, Hv, V]  bf16   u - w h^T, before gating; optional
 *   final_state  [N, Hv, V, K]  f32    state after the last chunk; optional
 * State tensors are [.., K, V] with GDN_STATE_KV.
 *
 * workspace: device memory of gdn_chunk_state_workspace_size() bytes (CUDA;
 * the CPU backend needs none). It may be NULL when the size is 0.
 */
GDN_API gdn_status gdn_chunk_state_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                  size_t *bytes);
GDN_API gdn_status gdn_chunk_state(gdn_context *ctx, const gdn_problem *p, const gdn_bf16 *k,
                                   const gdn_bf16 *w, const gdn_bf16 *u, const float *g,
                                   const float *h0, gdn_bf16 *h_out, gdn_bf16 *v_new,
                                   float *final_state, void *workspace, size_t workspace_bytes);

/*
 * Options shared by the whole-layer operations (gdn_chunk_forward,
 * gdn_recurrent_forward): the pre-processing of SPEC section 1.
 */
typedef struct gdn_forward_options {
    float scale;      /* output scale; 0 means 1/sqrt(K) */
    int l2norm_qk;    /* 1: q and k are L2-normalised per head in the kernel
                         (x / sqrt(sum x^2 + 1e-6)) */
    int beta_sigmoid; /* 1: beta holds logits; the kernel applies sigmoid */
    /* Gate. By default g is the per-token log decay (f32 [B,T,Hv], <= 0).
     * With qwen_gate = 1, g holds the raw a of Qwen3-Next and the decay is
     * g = -exp(A_log[h]) * softplus(a + dt_bias[h]); A_log and dt_bias are
     * f32 [Hv] (device pointers for the CUDA backend). */
    int qwen_gate;
    const float *A_log;
    const float *dt_bias;
} gdn_forward_options;

/* Defaults: scale 1/sqrt(K), no normalisation, beta as given, g as given. */
GDN_API void gdn_forward_options_init(gdn_forward_options *opts);

/* Element type of a state pool (gdn_recurrent_forward). */
typedef enum gdn_dtype {
    GDN_DTYPE_F32 = 0,  /* float32 */
    GDN_DTYPE_BF16 = 1  /* bf16 bits (gdn_bf16); half the memory traffic */
} gdn_dtype;

/*
 * gdn_recurrent_forward: the token recurrence of SPEC section 1 on states
 * kept in a caller-owned pool - the serving step (decode: one token per
 * sequence; speculative verification: a few).
 *
 * The sequences are the problem's (N = gdn_problem_num_seqs): B rows of T
 * tokens, or with cu_seqlens N packed sequences of any lengths (T_n >= 0;
 * an empty sequence reads and writes nothing). Sequence n reads its state
 * from pool slot state_indices[n], runs its tokens through the recurrence
 * and writes the state back to the same slot, in place. The recurrence
 * costs O(T_n) serial steps: for long prompts use the chunked forward.
 *
 * Inputs (opts: the pre-processing of gdn_forward_options; NULL = defaults):
 *   q, k           [B, T, Hk, K]          bf16
 *   v              [B, T, Hv, V]          bf16
 *   g              [B, T, Hv]             f32   log decay (<= 0); with
 *                                               opts->qwen_gate the raw a
 *   beta           [B, T, Hv]             f32   (logits with opts->beta_sigmoid)
 *   state_indices  [N]                    int32 the slot of each sequence;
 *                                               NULL = slot n for sequence n
 * In place:
 *   state_pool     [pool_size, Hv, V, K]  pool_dtype ([.., K, V] with GDN_STATE_KV)
 * Outputs:
 *   o              [B, T, Hv, V]          bf16
 *   state_history  [B*T, Hv, V, K]        pool_dtype, optional (NULL): the
 *                                               state after every token, in
 *                                               the token order of o (so
 *                                               [B, T, ..] without cu_seqlens)
 *                                               and in the pool's layout;
 *                                               for rolling a speculative
 *                                               sequence back to any token
 *
 * Slots. state_indices[n] < 0 marks a padding sequence: its pool slot is
 * neither read nor written, its o rows are zero and its state_history rows
 * are left untouched. Non-negative indices must be < pool_size and
 * distinct (two sequences updating one slot would race). Slots that no
 * sequence names are never touched. The CPU backend checks both rules and
 * fails before writing anything. The CUDA backend reads state_indices on
 * the device only (a device pointer; no host synchronisation): there a
 * repeated index is the caller's error (the slot's contents are then
 * undefined), and an index >= pool_size is treated like padding - the
 * kernel never reads or writes outside the pool.
 *
 * Precision. All arithmetic is f32. With a bf16 pool the state is widened
 * to f32 on load, stays f32 across all of a sequence's tokens in the call,
 * and is rounded to bf16 (nearest even) only when it is written back; each
 * state_history entry is rounded the same way. Each write-back costs one
 * bf16 rounding of the state (about 1.6e-3 relative), so a decode loop of
 * one-token calls accumulates them; see the README for the measured cost.
 *
 * state_history must not overlap state_pool, and o must not overlap any
 * input. The CUDA backend needs no workspace and does not allocate; with
 * cu_seqlens it needs cu_seqlens_device (this op has no workspace to copy
 * it into), so every call can be captured in a CUDA graph. Both backends
 * are deterministic (no atomics) and give a sequence the same bits alone
 * or in any batch. They sum in different orders, so their results differ
 * by f32 rounding (a few ulps of the state; o by a bf16 ulp where the two
 * f32 values round to neighbours).
 */
GDN_API gdn_status gdn_recurrent_forward(gdn_context *ctx, const gdn_problem *p,
                                         const gdn_forward_options *opts, const gdn_bf16 *q,
                                         const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                                         const float *beta, void *state_pool,
                                         gdn_dtype pool_dtype, int64_t pool_size,
                                         const int32_t *state_indices, gdn_bf16 *o,
                                         void *state_history);

/*
 * gdn_chunk_forward: the whole chunked Gated DeltaNet forward (SPEC
 * section 3) - what an engine calls for a layer's prefill.
 *
 * Inputs (NT = gdn_problem_num_chunks, N = gdn_problem_num_seqs):
 *   q, k         [B, T, Hk, K]  bf16   queries, keys
 *   v            [B, T, Hv, V]  bf16   values
 *   g            [B, T, Hv]     f32    per-token log decay (<= 0), not a
 *                                      cumsum; with opts->qwen_gate the raw a
 *   beta         [B, T, Hv]     f32    write strength; logits with
 *                                      opts->beta_sigmoid
 *   h0           [N, Hv, V, K]  f32    initial state, optional (NULL = 0)
 * Outputs:
 *   o            [B, T, Hv, V]  bf16   the layer output, required
 *   final_state  [N, Hv, V, K]  f32    state after the last token; optional
 *   chunk_states [NT, Hv, V, K] f32    state at the start of each 64-token
 *                                      chunk (packed over all sequences as
 *                                      h_out of gdn_chunk_state), optional:
 *                                      for prefix caching; f32, so that a
 *                                      run resumed from chunk c with
 *                                      h0 = chunk_states[c] continues exactly
 * State tensors are [.., K, V] with GDN_STATE_KV.
 *
 * opts: the pre-processing (scale, L2 norm of q and k, sigmoid of beta,
 * the Qwen3-Next gate); NULL means the defaults of gdn_forward_options_init.
 * opts->scale must be finite and >= 0 (0 = 1/sqrt(K)); the flags must be 0
 * or 1; with qwen_gate, A_log and dt_bias are required (ignored otherwise).
 *
 * NaN or Inf in an input element propagate to the outputs that depend on
 * it (the value heads of its sequence that read it, from its token on; on
 * the CUDA backend, whose tensor-core products mix a chunk's tokens, from
 * the start of its 64-token chunk on) and no further; nothing is checked
 * or raised, nothing is read or written out of bounds. A gate of -Inf
 * counts as Inf (the chunked form takes exp(-Inf - -Inf)).
 *
 * Deterministic, and batch invariant: a sequence gives the same bits alone
 * or in any batch of the same form (B rows without cu_seqlens, or packed
 * with cu_seqlens), for any thread count (CPU). The CUDA backend splits a
 * long sequence with few heads across blocks by a rule that looks at that
 * sequence alone (its length, Hv, V), not at the batch.
 *
 * workspace: device memory of gdn_chunk_forward_workspace_size() bytes
 * (CUDA; the CPU backend needs none). It may be NULL when the size is 0.
 * The CUDA workspace holds the per-chunk intermediates, the largest being
 * the bf16 chunk-start states (NT * Hv * V * K * 2 bytes).
 *
 * The outputs (o, final_state, chunk_states) must not overlap any input
 * or the workspace: the CUDA kernels read the inputs while other blocks
 * write the outputs, and the output pass may start before the per-chunk
 * pass has finished reading the inputs (sm_90).
 */
GDN_API gdn_status gdn_chunk_forward_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                    const gdn_forward_options *opts,
                                                    size_t *bytes);
GDN_API gdn_status gdn_chunk_forward(gdn_context *ctx, const gdn_problem *p,
                                     const gdn_forward_options *opts, const gdn_bf16 *q,
                                     const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                                     const float *beta, const float *h0, gdn_bf16 *o,
                                     float *final_state, float *chunk_states, void *workspace,
                                     size_t workspace_bytes);

/*
 * Context parallelism: the building blocks for splitting one sequence
 * across devices (or any slices). The state update is affine in the state:
 * over a slice of tokens, with S the [V, K] state (V-first),
 *
 *   S_after = S_before . transition + partial
 *
 * where transition [K, K] and partial [V, K] depend only on the slice's
 * k, v, g, beta. So each slice computes its summary from its own tokens
 * (gdn_chunk_forward_summary), the summaries are exchanged, each slice
 * folds those of the slices before it (gdn_state_advance, from h0) into its
 * true initial state, and runs gdn_chunk_forward from there. Chunks restart
 * at every slice start, so the result equals the unsplit forward within
 * SPEC's bounds (not bit for bit); slices need not be multiples of 64.
 *
 * gdn_chunk_forward_summary: the problem, options, k, v, g, beta are as in
 * gdn_chunk_forward (q is not needed); per sequence n and value head h:
 *   transition   [N, Hv, K, K]  f32   required
 *   partial      [N, Hv, V, K]  f32   required; the state the slice
 *                                     reaches from a zero state
 * With GDN_STATE_KV, partial is [N, Hv, K, V] and the relation reads
 * S^T_after = transition^T . S^T_before + partial (transition itself is the
 * same [K, K] matrix in both layouts). The summary is computed by the
 * chunked algorithm, with the same roundings, on V + K state rows.
 *
 * gdn_state_advance: state_out = state_in . transition + partial for each
 * of the N * Hv states (layout as above), in f32; state_in NULL means zero;
 * state_out may be state_in. Only p's N, Hv, K, V and layout are used.
 *
 * workspace (summary): device memory of
 * gdn_chunk_forward_summary_workspace_size() bytes for the CUDA backend
 * (NULL and 0 for the CPU). gdn_state_advance needs none.
 */
GDN_API gdn_status gdn_chunk_forward_summary_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                            const gdn_forward_options *opts,
                                                            size_t *bytes);
GDN_API gdn_status gdn_chunk_forward_summary(gdn_context *ctx, const gdn_problem *p,
                                             const gdn_forward_options *opts, const gdn_bf16 *k,
                                             const gdn_bf16 *v, const float *g,
                                             const float *beta, float *transition,
                                             float *partial, void *workspace,
                                             size_t workspace_bytes);
GDN_API gdn_status gdn_state_advance(gdn_context *ctx, const gdn_problem *p,
                                     const float *state_in, const float *transition,
                                     const float *partial, float *state_out);

/*
 * gdn_chunk_forward_cp: the chunked forward of sequences split across the
 * ranks (GPUs) of an NCCL communicator - context parallelism. Built when
 * NCCL is found at build time; otherwise (and on the CPU backend) it
 * returns GDN_ERROR_NOT_SUPPORTED.
 *
 * Every rank of nccl_comm (an ncclComm_t, passed as void *) calls it
 * collectively, each on a context of the communicator's device and with
 * its own slice: rank r holds tokens [s_r, s_r + T_r) of each of the B
 * sequences, ranks in token order (rank r+1's slice follows rank r's).
 * p describes the local slice: B, T = T_r (T_r may differ between ranks,
 * and need not be a multiple of 64), Hk, Hv, K, V, layout and head map as
 * in gdn_chunk_forward and the same on every rank; cu_seqlens must be NULL.
 * q, k, v, g, beta, o and opts are as in gdn_chunk_forward, for the slice.
 *   h0           [B, Hv, V, K] f32  the sequences' initial states; the same
 *                                   on every rank, or NULL on every rank
 *   final_state  [B, Hv, V, K] f32  optional: the state at the end of this
 *                                   rank's slice (on the last rank, the
 *                                   sequences' final states)
 * Each rank summarises its slice (gdn_chunk_forward_summary), the
 * summaries are all-gathered over NCCL on the context's stream, and each
 * rank folds those of the ranks before it into its initial state
 * (gdn_state_advance) and finishes its slice. The result equals the
 * single-GPU forward within SPEC's bounds (chunks restart at each slice's
 * start, so not bit for bit). Stream-ordered, no host synchronisation, no
 * allocation; the workspace (gdn_chunk_forward_cp_workspace_size, which
 * reads the rank count from nccl_comm) holds the forward's intermediates
 * and nranks summaries.
 */
GDN_API gdn_status gdn_chunk_forward_cp_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                       const gdn_forward_options *opts,
                                                       void *nccl_comm, size_t *bytes);
GDN_API gdn_status gdn_chunk_forward_cp(gdn_context *ctx, const gdn_problem *p,
                                        const gdn_forward_options *opts, const gdn_bf16 *q,
                                        const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                                        const float *beta, const float *h0, gdn_bf16 *o,
                                        float *final_state, void *nccl_comm, void *workspace,
                                        size_t workspace_bytes);

#ifdef __cplusplus
}
#endif
#endif /* GDN_H */

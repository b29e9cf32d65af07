/* gdn - the libgdn command: run an operation on .npy files, or a demo that
 * times the kernel and checks it against the fp64 oracle. This file holds
 * main, the usage text and the helpers the subcommands share; the
 * subcommands are in cmd_run.c and cmd_demo.c. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "devbuf.h"

void cli_run_usage(FILE *f) {
    fputs("gdn run --op state --in DIR --out DIR [options]\n"
          "  The inter-chunk state recurrence (gdn_chunk_state) on .npy files.\n"
          "  bf16 tensors are '<u2' (raw bf16 bits); '<f4' is accepted for them and rounded.\n"
          "  Reads from --in DIR:\n"
          "    k.npy            [B,T,Hk,K]  bf16   keys\n"
          "    w.npy            [B,T,Hv,K]  bf16   WY-transformed keys\n"
          "    u.npy            [B,T,Hv,V]  bf16   WY-transformed values\n"
          "    g_cumsum.npy     [B,T,Hv]    '<f4'  chunk-local cumulative log-decay\n"
          "    h0.npy           [N,Hv,V,K]  '<f4'  initial state (optional; [N,Hv,K,V] with kv)\n"
          "    cu_seqlens.npy   [N+1]       '<i4' or '<i8'  sequence starts (optional; needs B=1)\n"
          "  Writes to --out DIR (created if missing):\n"
          "    h.npy            [NT,Hv,V,K] '<u2'  state at each chunk start;\n"
          "                     [B,ceil(T/64),Hv,V,K] when B > 1 without cu_seqlens\n"
          "    v_new.npy        [B,T,Hv,V]  '<u2'  u - w h^T, before gating\n"
          "    final_state.npy  [N,Hv,V,K]  '<f4'  state after the last chunk\n"
          "  (state tensors are [..,K,V] with --state-layout kv; N = B without cu_seqlens)\n"
          "  Options:\n"
          "    --state-layout vk|kv      state tensors [..,V,K] (default) or [..,K,V]\n"
          "    --head-map block|tiled    value head h reads key head h/(Hv/Hk) (default)\n"
          "                              or h%Hk\n"
          "    --backend auto|cpu|cuda   default auto: CUDA when available, else CPU\n"
          "    --device N                CUDA device (default 0)\n"
          "\n"
          "gdn run --op forward --in DIR --out DIR [options]\n"
          "  The whole chunked forward (gdn_chunk_forward) on .npy files.\n"
          "  Reads from --in DIR:\n"
          "    q.npy, k.npy     [B,T,Hk,K]  bf16   queries, keys\n"
          "    v.npy            [B,T,Hv,V]  bf16   values\n"
          "    g.npy            [B,T,Hv]    '<f4'  per-token log decay (raw a with --qwen-gate)\n"
          "    beta.npy         [B,T,Hv]    '<f4'  write strength (logits with --beta-sigmoid)\n"
          "    h0.npy           [N,Hv,V,K]  '<f4'  initial state (optional; [N,Hv,K,V] with kv)\n"
          "    cu_seqlens.npy   [N+1]       '<i4' or '<i8'  sequence starts (optional; needs B=1)\n"
          "    A_log.npy, dt_bias.npy  [Hv] '<f4'  the gate's parameters (with --qwen-gate)\n"
          "  Writes to --out DIR (created if missing):\n"
          "    o.npy            [B,T,Hv,V]  '<u2'  the output\n"
          "    final_state.npy  [N,Hv,V,K]  '<f4'  state after the last token ([N,Hv,K,V] with kv)\n"
          "  Options: --state-layout, --head-map, --backend, --device as for --op state, and\n"
          "    --scale X                 output scale (default 0: 1/sqrt(K))\n"
          "    --l2norm-qk               L2-normalise q and k per head in the kernel\n"
          "    --beta-sigmoid            beta.npy holds logits; the kernel applies sigmoid\n"
          "    --qwen-gate               g.npy holds Qwen3-Next's raw a; the decay is\n"
          "                              -exp(A_log) * softplus(a + dt_bias)\n"
          "\n"
          "gdn run --op recurrent --in DIR --out DIR [options]\n"
          "  The same inputs and outputs as --op forward, through the token recurrence\n"
          "  (gdn_recurrent_forward): a pool of N slots holds h0 (or zeros), sequence n in\n"
          "  slot n; final_state.npy is the pool afterwards, as '<f4'. Options as for\n"
          "  --op forward, and\n"
          "    --pool-dtype f32|bf16     the pool's element type (default f32)\n",
          f);
}

void cli_demo_usage(FILE *f) {
    fputs("gdn demo [options]\n"
          "  Times the whole chunked forward (gdn_chunk_forward) on random inputs, as\n"
          "  Qwen3-Next calls the layer (q, k L2-normalised in the kernel, h0 given,\n"
          "  final_state written): median time, GB/s, TFLOP/s and, on a GPU, the memory\n"
          "  floor (bytes / measured device copy bandwidth). Checks o and final_state on\n"
          "  the leading value heads against the fp64 oracle (relative Frobenius error\n"
          "  o <= 4e-3, final_state <= 3.5e-3: PASS, exit 0).\n"
          "  Options:\n"
          "    --backend auto|cpu|cuda   default auto: CUDA when available, else CPU\n"
          "    --device N                CUDA device (default 0)\n"
          "    --B N --T N --Hk N --Hv N --K N --V N\n"
          "                              the shape; defaults: GPU B=1 T=8192 Hk=16 Hv=32\n"
          "                              K=V=128, CPU B=1 T=1024 Hk=4 Hv=8 K=V=128\n"
          "    --seed N                  random seed (default 1)\n",
          f);
}

void cli_usage(FILE *f) {
    fprintf(f,
            "gdn - Gated DeltaNet kernels (libgdn %d.%d.%d)\n"
            "\n"
            "Usage:\n"
            "  gdn run --op state|forward|recurrent --in DIR --out DIR [options]\n"
            "  gdn demo [options]\n"
            "  gdn help | --help          this text (gdn COMMAND --help: one command)\n"
            "  gdn version                version and backends\n"
            "\n",
            GDN_VERSION_MAJOR, GDN_VERSION_MINOR, GDN_VERSION_PATCH);
    cli_run_usage(f);
    fputs("\n", f);
    cli_demo_usage(f);
    fputs("\nExit status: 0 success (demo: PASS), 1 library or device failure (demo: FAIL),\n"
          "2 bad command line or bad input files.\n",
          f);
}

static void vreport(const char *cmd, const char *fmt, va_list ap) {
    fprintf(stderr, "gdn%s%s: error: ", cmd ? " " : "", cmd ? cmd : "");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "Usage: see 'gdn %s --help'\n", cmd);
    else
        fprintf(stderr, "Usage: see 'gdn --help'\n");
    return CLI_USAGE;
}

int cli_error(int code, const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return code;
}

int cli_parse(int argc, char **argv, const cli_opt *opts, int nopts) {
    return cli_parse_flags(argc, argv, opts, nopts, NULL, 0);
}

int cli_parse_flags(int argc, char **argv, const cli_opt *opts, int nopts, const cli_flag *flags,
                    int nflags) {
    const char *cmd = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) return -1;
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return cli_usage_error(cmd, "unexpected argument '%s'", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const cli_flag *fl = NULL;
        for (int j = 0; j < nflags; j++)
            if (strlen(flags[j].name) == len && strncmp(flags[j].name, name, len) == 0)
                fl = &flags[j];
        if (fl) {
            if (eq)
                return cli_usage_error(cmd, "flag '--%s' takes no value (got '%s')", fl->name,
                                       arg);
            *fl->set = 1;
            continue;
        }
        const cli_opt *o = NULL;
        for (int j = 0; j < nopts; j++)
            if (strlen(opts[j].name) == len && strncmp(opts[j].name, name, len) == 0) o = &opts[j];
        if (!o) return cli_usage_error(cmd, "unknown option '--%.*s'", (int)len, name);
        if (eq) {
            *o->value = eq + 1;
        } else {
            if (i + 1 >= argc) return cli_usage_error(cmd, "option '--%s' needs a value", o->name);
            *o->value = argv[++i];
        }
        if ((*o->value)[0] == '\0')
            return cli_usage_error(cmd, "option '--%s' has an empty value", o->name);
    }
    return CLI_OK;
}

int cli_int(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi,
            int64_t *out) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return cli_usage_error(cmd, "option '--%s': '%s' is not an integer", opt, s);
    if (v < lo || v > hi)
        return cli_usage_error(cmd, "option '--%s': %lld is out of range [%lld, %lld]", opt, v,
                               (long long)lo, (long long)hi);
    *out = v;
    return CLI_OK;
}

int cli_double(const char *cmd, const char *opt, const char *s, double lo, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v))
        return cli_usage_error(cmd, "option '--%s': '%s' is not a finite number", opt, s);
    if (v < lo) return cli_usage_error(cmd, "option '--%s': %g must be >= %g", opt, v, lo);
    *out = v;
    return CLI_OK;
}

int cli_backend(const char *cmd, const char *s, gdn_backend *out) {
    if (strcmp(s, "auto") == 0)
        *out = GDN_BACKEND_AUTO;
    else if (strcmp(s, "cpu") == 0)
        *out = GDN_BACKEND_CPU;
    else if (strcmp(s, "cuda") == 0)
        *out = GDN_BACKEND_CUDA;
    else
        return cli_usage_error(cmd, "option '--backend': '%s' is not one of auto, cpu, cuda", s);
    return CLI_OK;
}

int cli_state_layout(const char *cmd, const char *s, gdn_state_layout *out) {
    if (strcmp(s, "vk") == 0)
        *out = GDN_STATE_VK;
    else if (strcmp(s, "kv") == 0)
        *out = GDN_STATE_KV;
    else
        return cli_usage_error(cmd, "option '--state-layout': '%s' is not one of vk, kv", s);
    return CLI_OK;
}

int cli_head_map(const char *cmd, const char *s, gdn_head_map *out) {
    if (strcmp(s, "block") == 0)
        *out = GDN_HEAD_MAP_BLOCK;
    else if (strcmp(s, "tiled") == 0)
        *out = GDN_HEAD_MAP_TILED;
    else
        return cli_usage_error(cmd, "option '--head-map': '%s' is not one of block, tiled", s);
    return CLI_OK;
}

int cli_context(const char *cmd, gdn_backend backend, int device, gdn_context **ctx) {
    gdn_status st = gdn_context_create(ctx, backend, device);
    if (st == GDN_SUCCESS) {
        /* the tool's own device buffers must live on the context's device */
        if (gdn_context_backend(*ctx) == GDN_BACKEND_CUDA && gdn_dev_set_device(device) != 0) {
            gdn_context_destroy(*ctx);
            *ctx = NULL;
            return cli_error(CLI_FAIL, cmd, "%s", gdn_dev_error());
        }
        return CLI_OK;
    }
    if (st == GDN_ERROR_NOT_SUPPORTED && backend == GDN_BACKEND_CUDA)
        return cli_error(CLI_FAIL, cmd,
                         "the CUDA backend is not available (libgdn was built without CUDA, or "
                         "there is no usable device %d): %s",
                         device, gdn_status_string(st));
    return cli_error(CLI_FAIL, cmd, "gdn_context_create(%s, device %d) failed: %s",
                     cli_backend_name(backend), device, gdn_status_string(st));
}

int cli_lib_error(const char *cmd, const char *call, gdn_context *ctx, gdn_status st) {
    const char *msg = gdn_last_error(ctx);
    return cli_error(st == GDN_ERROR_INVALID_ARGUMENT ? CLI_USAGE : CLI_FAIL, cmd,
                     "%s failed (%s): %s", call, gdn_status_string(st),
                     msg && msg[0] ? msg : "(no message)");
}

const char *cli_backend_name(gdn_backend b) {
    switch (b) {
    case GDN_BACKEND_CPU: return "cpu";
    case GDN_BACKEND_CUDA: return "cuda";
    case GDN_BACKEND_AUTO: return "auto";
    }
    return "?";
}

const char *cli_device_name(gdn_context *ctx) {
    static char name[256];
    if (gdn_context_backend(ctx) == GDN_BACKEND_CUDA) return gdn_dev_name();
    snprintf(name, sizeof name, "host CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return name;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *colon = strchr(line, ':');
        if (!colon) break;
        colon++;
        while (*colon == ' ' || *colon == '\t') colon++;
        snprintf(name, sizeof name, "%s", colon);
        name[strcspn(name, "\n")] = '\0';
        break;
    }
    fclose(f);
    return name;
}

static int cmd_version(void) {
    printf("gdn (libgdn) %d.%d.%d\n", GDN_VERSION_MAJOR, GDN_VERSION_MINOR, GDN_VERSION_PATCH);
#ifdef GDN_HAVE_CUDA
    if (gdn_cuda_available())
        printf("backends: cpu, cuda (device: %s)\n", gdn_dev_name());
    else
        printf("backends: cpu, cuda (built, but no usable device)\n");
#else
    printf("backends: cpu (built without CUDA)\n");
#endif
    return CLI_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "gdn: error: no command given\n\n");
        cli_usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        if (argc > 2 && strcmp(argv[2], "run") == 0)
            cli_run_usage(stdout);
        else if (argc > 2 && strcmp(argv[2], "demo") == 0)
            cli_demo_usage(stdout);
        else
            cli_usage(stdout);
        return CLI_OK;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        if (argc > 2) return cli_usage_error("version", "unexpected argument '%s'", argv[2]);
        return cmd_version();
    }
    if (strcmp(cmd, "run") == 0) return cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "demo") == 0) return cmd_demo(argc - 1, argv + 1);
    fprintf(stderr, "gdn: error: unknown command '%s'\n\n", cmd);
    cli_usage(stderr);
    return CLI_USAGE;
}

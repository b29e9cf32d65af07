/* cli.h - what the parts of the gdn command share (tools/gdn.c holds these
 * helpers and main; cmd_run.c and cmd_demo.c the subcommands). */
#ifndef GDN_CLI_H
#define GDN_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "gdn.h"

/* Exit codes. */
enum {
    CLI_OK = 0,    /* success (demo: PASS) */
    CLI_FAIL = 1,  /* a library or device failure (demo: FAIL) */
    CLI_USAGE = 2  /* bad command line or bad input files */
};

/* One option of a subcommand: "--name VALUE" or "--name=VALUE". *value is
 * left alone unless the option is given. */
typedef struct cli_opt {
    const char *name; /* without the leading "--" */
    const char **value;
} cli_opt;

/* Parse argv[1..argc-1] (argv[0] is the subcommand's name) against opts.
 * Returns CLI_OK, CLI_USAGE after printing an error, or -1 for --help /
 * -h (the caller prints its help and exits 0). */
int cli_parse(int argc, char **argv, const cli_opt *opts, int nopts);

/* A flag of a subcommand: "--name" alone (no value) sets *set to 1. */
typedef struct cli_flag {
    const char *name; /* without the leading "--" */
    int *set;
} cli_flag;

/* cli_parse with flags besides the options. */
int cli_parse_flags(int argc, char **argv, const cli_opt *opts, int nopts, const cli_flag *flags,
                    int nflags);

/* "gdn <cmd>: error: ..." on stderr; returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* "gdn <cmd>: error: ..." on stderr, no usage hint; returns code. */
int cli_error(int code, const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Integer option value in [lo, hi]; CLI_OK or CLI_USAGE after an error. */
int cli_int(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out);
/* Finite floating-point option value >= lo; CLI_OK or CLI_USAGE. */
int cli_double(const char *cmd, const char *opt, const char *s, double lo, double *out);
/* "auto" | "cpu" | "cuda". */
int cli_backend(const char *cmd, const char *s, gdn_backend *out);
int cli_state_layout(const char *cmd, const char *s, gdn_state_layout *out);
int cli_head_map(const char *cmd, const char *s, gdn_head_map *out);

/* Create a context; on failure print why and return CLI_FAIL. */
int cli_context(const char *cmd, gdn_backend backend, int device, gdn_context **ctx);
/* Print the failure of a library call (status and gdn_last_error) and
 * return its exit code: CLI_USAGE for GDN_ERROR_INVALID_ARGUMENT (bad
 * inputs), else CLI_FAIL. */
int cli_lib_error(const char *cmd, const char *call, gdn_context *ctx, gdn_status st);

/* "cpu" / "cuda". */
const char *cli_backend_name(gdn_backend b);
/* A name for the device the context runs on: the GPU's name, or the CPU's
 * model name. */
const char *cli_device_name(gdn_context *ctx);

/* The full usage text. */
void cli_usage(FILE *f);
void cli_run_usage(FILE *f);
void cli_demo_usage(FILE *f);

int cmd_run(int argc, char **argv);
int cmd_demo(int argc, char **argv);

#endif

/* A program outside the libgdn tree: links the installed library. */
#include <stdio.h>
#include "gdn.h"
int main(void) {
    gdn_context *ctx;
    if (gdn_context_create(&ctx, GDN_BACKEND_CPU, 0) != GDN_SUCCESS) return 1;
    gdn_problem p;
    gdn_problem_init(&p, 1, 0, 1, 1, 8, 8); /* T = 0: refused */
    size_t b;
    gdn_status st = gdn_chunk_state_workspace_size(ctx, &p, &b);
    printf("%s: %s\n", gdn_status_string(st), gdn_last_error(ctx));
    gdn_context_destroy(ctx);
    return st == GDN_ERROR_INVALID_ARGUMENT ? 0 : 1;
}

"""FLA's fused_recurrent_gated_delta_rule on the rows bench_recurrent ran, on
the same card in the same run, and the combined table.

usage: python3 bench/fla_recurrent.py OURS.csv [--markdown OUT.md]

What FLA 0.6.0 offers. fla.ops.gated_delta_rule.fused_recurrent_gated_delta_rule
(q, k, v, g, beta, scale, initial_state, output_final_state,
use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias,
use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first, cu_seqlens) has
no pool / state-index form for the gated delta rule (only fla.ops.kda has
ssm_state_indices): it reads initial_state [N, HV, ...] (f32 or bf16, widened
to f32) and writes a new f32 final_state [N, HV, ...] allocated per call. So
FLA is timed on the contiguous form, twice:
- "FLA (us)": every call's final state is kept alive during the capture, so
  each call writes its own buffer (cycled like the states): the same DRAM
  traffic as libgdn's in-place update of an f32 pool. The ratios use it.
- "FLA, reused output": the final state is dropped after each call, so the
  caching allocator gives every call the same block; at small N it stays
  in L2 and its writes never reach DRAM between calls (about half the
  bytes at N = 1).
Neither counts the copy back into a pool that a serving engine using FLA
would need. Two more columns for an f32 pool:
- "FLA kernel in place": FLA's Triton kernel launched directly with the
  final state aliased to the initial state (safe: each program reads its
  tile before its token loop and writes the same tile after it). The same
  operation as libgdn's in-place pool update, by FLA's kernel.
- "FLA + gather / scatter": the public call inside what an engine with a
  state pool would have to do around it: index_select the N states from
  their slots, the call, index_copy_ the final states back. For a bf16 pool FLA reads bf16 and writes f32 (1.5x libgdn's
bytes). For the random-slots row FLA runs the same N contiguously (it
cannot index).

Timing as libgdn's: the same number of calls captured in one CUDA graph, on
the same number of state copies cycled (so the states come from DRAM), the
graph replayed, median of 15 repetitions. Each row runs in its own
subprocess, so a fault (an illegal memory access poisons the CUDA context)
is reported for that row and the others still run.
"""
import csv
import json
import subprocess
import sys
import time


def run_one(row):
    """Child: time FLA on one row; prints 'RESULT <us per call>'."""
    import torch
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from fla_chunk_state import graph_time_ms

    N, Hk, Hv, K, V = (int(row[x]) for x in ("N", "Hk", "Hv", "K", "V"))
    dt = torch.float32 if row["dtype"] == "f32" else torch.bfloat16
    v_first = row["layout"] == "vk"
    copies = int(row["copies"])
    # one state copy: calls on the same h0 (final states into fresh tensors)
    calls = int(row["calls"]) if copies > 1 else 1
    torch.manual_seed(0)
    dev = "cuda"
    q = F.normalize(torch.randn(N, 1, Hk, K, device=dev), dim=-1).bfloat16()
    k = F.normalize(torch.randn(N, 1, Hk, K, device=dev), dim=-1).bfloat16()
    v = torch.randn(N, 1, Hv, V, device=dev).bfloat16()
    g = F.logsigmoid(torch.rand(N, 1, Hv, device=dev)) / 4
    beta = torch.rand(N, 1, Hv, device=dev).sigmoid()
    shape = (N, Hv, V, K) if v_first else (N, Hv, K, V)
    h0s = [torch.full(shape, 0.0115, dtype=dt, device=dev) for _ in range(copies)]

    def make_fn(keep):
        def fn():
            outs = []  # keep=True: every call's output stays alive, so each gets its own memory
            for i in range(calls):
                o, ht = fused_recurrent_gated_delta_rule(
                    q, k, v, g=g, beta=beta, initial_state=h0s[i % copies],
                    output_final_state=True, state_v_first=v_first)
                if keep:
                    outs.append(ht)
        return fn

    def make_inplace_fn():
        # FLA's own kernel with ht aliased to h0: each program loads its
        # [BV, K] tile of h0 before its token loop and stores the same tile
        # after it, so the alias is safe; this is the pool update libgdn does
        # (in place), done by FLA's kernel, for the same DRAM traffic.
        from fla.ops.gated_delta_rule.fused_recurrent import (
            fused_recurrent_gated_delta_rule_fwd_kernel as kern)
        import triton
        o = torch.empty_like(v)
        BK = triton.next_power_of_2(K)
        BV = min(8, triton.next_power_of_2(V))
        grid = (triton.cdiv(V, BV) * N * Hv,)

        def fn():
            for i in range(calls):
                h = h0s[i % copies]
                kern[grid](q=q, k=k, v=v, g=g, gk=None, gv=None, beta=beta, A_log=None,
                           dt_bias=None, o=o, h0=h, ht=h, cu_seqlens=None, scale=K ** -0.5,
                           T=1, H=Hk, HV=Hv, K=K, V=V, BK=BK, BV=BV, IS_BETA_HEADWISE=True,
                           USE_QK_L2NORM_IN_KERNEL=False, APPLY_BETA_SIGMOID=False,
                           ALLOW_NEG_EIGVAL=False, STATE_V_FIRST=v_first,
                           num_warps=1, num_stages=3)
        return fn

    def make_pool_fn(slot_lists):
        # what an engine with a pool of states would do around FLA's call:
        # gather the N states at their slots, run, scatter the final states back
        def fn():
            for i in range(calls):
                pool, idx = h0s[i % copies], slot_lists[i % copies]
                h0 = pool.index_select(0, idx)
                o, ht = fused_recurrent_gated_delta_rule(
                    q, k, v, g=g, beta=beta, initial_state=h0,
                    output_final_state=True, state_v_first=v_first)
                pool.index_copy_(0, idx, ht.to(pool.dtype))
        return fn

    print(f"DEVICE {torch.cuda.get_device_name()}", flush=True)
    # reused: the caching allocator hands each call the block the previous
    # call freed, so every final state lands in one buffer (L2-resident when
    # small); distinct: a final-state buffer per call, cycled like the states
    for tag, keep in (("RESULT_REUSED", False), ("RESULT", True)):
        ms = graph_time_ms(make_fn(keep), reps=15, inner=None)
        print(f"{tag} {ms * 1e3 / calls:.4f}", flush=True)
        torch.cuda.empty_cache()
    if dt == torch.float32:
        ms = graph_time_ms(make_inplace_fn(), reps=15, inner=None)
        print(f"RESULT_INPLACE {ms * 1e3 / calls:.4f}", flush=True)
        torch.cuda.empty_cache()
        P = int(row["pool_size"])
        if P != N:  # the random-slots row: a pool of P states per copy, N random slots
            h0s[:] = [torch.full((P,) + shape[1:], 0.0115, dtype=dt, device=dev)
                      for _ in range(max(1, copies * N // P))]
            copies = len(h0s)
        slots = [torch.randperm(P, device=dev)[:N] for _ in range(copies)]
        ms = graph_time_ms(make_pool_fn(slots), reps=15, inner=None)
        print(f"RESULT_POOL {ms * 1e3 / calls:.4f}", flush=True)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        run_one(json.loads(sys.argv[2]))
        return
    rows = list(csv.DictReader(open(sys.argv[1])))
    md = sys.argv[sys.argv.index("--markdown") + 1] if "--markdown" in sys.argv else None
    # the parent does no CUDA work: the device name comes from the children
    name = "unknown (no FLA row ran)"
    bw = float(rows[0]["copy_bw"]) if rows else float("nan")
    out = ["| row | N | pool | layout | slots | ours (us) | FLA (us) | floor (us) | ours / floor | "
           "ours % of copy BW | FLA / floor | FLA / ours | FLA, reused output (us) | "
           "FLA kernel in place (us) | FLA in place / ours | FLA + gather / scatter (us) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
           "| --- | --- | --- |"]
    for line in out:
        print(line, flush=True)
    notes = set()
    for r in rows:
        ours = float(r["ours_us"])
        floor = float(r["state_bytes"]) / float(r["copy_bw"]) * 1e6
        try:
            p = subprocess.run([sys.executable, __file__, "--one", json.dumps(r)],
                               capture_output=True, text=True, timeout=120)
            res = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            reu = [x for x in p.stdout.splitlines() if x.startswith("RESULT_REUSED ")]
            reused_s = f"{float(reu[-1].split()[1]):.2f}" if reu else "-"
            inp = [x for x in p.stdout.splitlines() if x.startswith("RESULT_INPLACE ")]
            inplace = float(inp[-1].split()[1]) if inp else float("nan")
            pol = [x for x in p.stdout.splitlines() if x.startswith("RESULT_POOL ")]
            pool_s = f"{float(pol[-1].split()[1]):.2f}" if pol else "-"
            dev = [x[7:] for x in p.stdout.splitlines() if x.startswith("DEVICE ")]
            if dev:
                name = dev[-1]
            if p.returncode == 0 and res:
                fla = float(res[-1].split()[1])
                fla_s = f"{fla:.2f}"
            else:
                err = (p.stderr.strip().splitlines() or ["no output"])[-1]
                fla, fla_s = float("nan"), "failed *"
                notes.add(f"* {r['name']}: FLA failed (exit {p.returncode}): {err[:300]}")
                print(f"{r['name']}: FLA failed (exit {p.returncode}): {err[:300]}", flush=True)
        except subprocess.TimeoutExpired:
            fla, fla_s, reused_s = float("nan"), "timeout *", "-"
            inplace, pool_s = float("nan"), "-"
            notes.add(f"* {r['name']}: FLA did not finish in 120 s")
        slots = "random" if int(r["pool_size"]) != int(r["N"]) else "n"
        if slots == "random":
            notes.add("random slots: FLA has no state-index form; it ran the same N contiguously")
        if r["dtype"] == "bf16":
            notes.add("bf16 pool: FLA reads bf16 h0 but always writes an f32 final state "
                      "(1.5x the bytes); the floor is libgdn's bytes")
        out.append(f"| {r['name']} | {r['N']} | {r['dtype']} | {r['layout'].upper()} | {slots} | "
                   f"{ours:.2f} | {fla_s} | {floor:.2f} | {ours / floor:.2f} | {100 * floor / ours:.0f}% | "
                   f"{fla / floor:.2f} | {fla / ours:.2f} | {reused_s} | "
                   + (f"{inplace:.2f} | {inplace / ours:.3f} | " if inplace == inplace else "- | - | ")
                   + f"{pool_s} |")
        print(out[-1], flush=True)
    out.append("")
    out.extend(sorted(notes))
    head = [f"card: {name}; date: {time.strftime('%Y-%m-%d')}; copy bandwidth (read+write, "
            f"cudaMemcpy, measured by bench_recurrent): {bw / 1e9:.0f} GB/s; decode step T=1, "
            + ("one pool copy (--warm)" if rows and rows[0].get("warm") == "1"
               else "state copies cycled (L2 cold)"), ""]
    text = "\n".join(head + out)
    print(text)
    if md:
        open(md, "w").write(text + "\n")


if __name__ == "__main__":
    main()

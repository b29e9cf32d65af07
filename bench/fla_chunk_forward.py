"""FLA's chunk_gated_delta_rule at the shapes bench_chunk_forward ran, on the
same card in the same run, and the combined table.

usage: python3 bench/fla_chunk_forward.py OURS.csv [--markdown OUT.md]

FLA is called as libgdn is benchmarked: q and k L2-normalised in the kernel,
beta given, g a per-token log decay, an f32 initial state (V-first), the
final state written. Two FLA times per shape: the call captured in a CUDA
graph and replayed (kernel time, median of many replays), and the plain
Python call (wall time of one synchronised call, median), which includes
Python and launch overhead. The floor is the larger of bytes / the best copy
bandwidth of this run and flops / the bf16 matmul rate bench_chunk_forward
measured (cuBLAS).
"""
import csv
import sys
import time

import torch
from fla.ops.gated_delta_rule import chunk_gated_delta_rule

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fla_chunk_state import graph_time_ms, torch_copy_bandwidth  # noqa: E402


def python_call_ms(fn, reps=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def inputs(B, T, Hk, Hv, K, V, dev="cuda"):
    torch.manual_seed(0)
    q = (2 * torch.rand(B, T, Hk, K, device=dev) - 1).bfloat16()
    k = (2 * torch.rand(B, T, Hk, K, device=dev) - 1).bfloat16()
    v = (2 * torch.rand(B, T, Hv, V, device=dev) - 1).bfloat16()
    g = -0.1 * torch.rand(B, T, Hv, device=dev)
    beta = torch.rand(B, T, Hv, device=dev)
    h0 = 0.1 * (2 * torch.rand(B, Hv, V, K, device=dev) - 1)
    return q, k, v, g, beta, h0


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    md = sys.argv[sys.argv.index("--markdown") + 1] if "--markdown" in sys.argv else None
    name = torch.cuda.get_device_name()
    bw_memcpy = float(rows[0]["copy_bw"])
    mm = float(rows[0]["matmul_rate"])
    bw_torch = torch_copy_bandwidth()
    bw = max(bw_memcpy, bw_torch)
    out = [f"card: {name}; date: {time.strftime('%Y-%m-%d')}; copy bandwidth (read+write): cudaMemcpy "
           f"{bw_memcpy / 1e9:.0f} GB/s, torch copy kernel {bw_torch / 1e9:.0f} GB/s; floor uses "
           f"{bw / 1e9:.0f}; bf16 matmul (cuBLAS 8192^3) {mm / 1e12:.0f} TFLOP/s", "",
           "| name | B | T | Hk | Hv | K = V | ours (ms) | FLA, graph replay (ms) | FLA, Python call (ms) "
           "| floor (ms) | ours / floor | FLA graph / ours |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        B, T, Hk, Hv, K, V = (int(r[x]) for x in ("B", "T", "Hk", "Hv", "K", "V"))
        q, k, v, g, beta, h0 = inputs(B, T, Hk, Hv, K, V)

        def fn():
            return chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True, state_v_first=True)
        with torch.inference_mode():
            try:
                fla_graph = graph_time_ms(fn, reps=20, inner=5)
            except Exception as e:  # report, do not hide
                print(f"{r['name']}: FLA (graph) failed: {e}", flush=True)
                fla_graph = float("nan")
            try:
                fla_py = python_call_ms(fn)
            except Exception as e:
                print(f"{r['name']}: FLA (python) failed: {e}", flush=True)
                fla_py = float("nan")
        ours = float(r["ours_ms"])
        floor = max(float(r["bytes"]) / bw, float(r["flops"]) / mm) * 1e3
        out.append(f"| {r['name']} | {B} | {T} | {Hk} | {Hv} | {K} | {ours:.3f} | {fla_graph:.3f} | "
                   f"{fla_py:.3f} | {floor:.3f} | {ours / floor:.2f} | {fla_graph / ours:.2f} |")
        print(out[-1], flush=True)
        del q, k, v, g, beta, h0
        torch.cuda.empty_cache()
    text = "\n".join(out)
    print(text)
    if md:
        open(md, "w").write(text + "\n")


if __name__ == "__main__":
    main()

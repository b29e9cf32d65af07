"""FLA's chunk_gated_delta_rule_fwd_h at the shapes bench_chunk_state ran,
on the same card in the same run, and the combined table.

usage: python3 bench/fla_chunk_state.py OURS.csv [--markdown OUT.md]

FLA is timed as libgdn is: the call captured in a CUDA graph and replayed
(median of many replays), so neither side pays Python or launch overhead.
The floor is bytes / the best device copy bandwidth measured in this run:
the larger of bench_chunk_state's cudaMemcpy and torch's copy kernel.
"""
import csv
import sys
import time

import torch
from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h


def graph_time_ms(fn, reps=30, inner=10):
    """Milliseconds of one fn() replayed from a CUDA graph: the median over
    reps repetitions of inner replays (inner=None: as many as make a
    repetition about 2 ms, 1 to 200), after warm-up outside the capture."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()  # autotune and compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if inner is None:
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        one = max(a.elapsed_time(b), 1e-3)
        inner = min(200, max(1, int(2.0 / one + 0.999)))
    for _ in range(reps):
        a.record()
        for _ in range(inner):
            g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    times.sort()
    return times[len(times) // 2]


def torch_copy_bandwidth():
    """1 GiB y.copy_(x), called directly (median of 11 after warm-up): in a
    CUDA graph the copy becomes a copy-engine memcpy node (about 2.43 TB/s on
    an H100 against about 3.0 TB/s for the direct call)."""
    x = torch.empty(1 << 29, dtype=torch.int16, device="cuda").random_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(11):
        a.record()
        y.copy_(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return 2 * x.numel() * x.element_size() / (times[len(times) // 2] * 1e-3)


def fla_inputs(B, T, Hk, Hv, K, V, dev="cuda"):
    torch.manual_seed(0)
    k = torch.nn.functional.normalize(torch.randn(B, T, Hk, K, device=dev), dim=-1).bfloat16()
    w = (0.6 * torch.randn(B, T, Hv, K, device=dev) / K**0.5).bfloat16()
    u = (0.5 * torch.randn(B, T, Hv, V, device=dev)).bfloat16()
    g = torch.nn.functional.logsigmoid(torch.rand(B, T, Hv, device=dev)) / 4
    NT = (T + 63) // 64
    pad = NT * 64 - T
    gp = torch.nn.functional.pad(g, (0, 0, 0, pad)).view(B, NT, 64, Hv).cumsum(2)
    g = gp.view(B, NT * 64, Hv)[:, :T].contiguous().float()
    h0 = 0.1 * torch.randn(B, Hv, V, K, device=dev)
    return k, w, u, g, h0


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    md = sys.argv[sys.argv.index("--markdown") + 1] if "--markdown" in sys.argv else None
    name = torch.cuda.get_device_name()
    bw_memcpy = float(rows[0]["copy_bw"])
    bw_torch = torch_copy_bandwidth()
    bw = max(bw_memcpy, bw_torch)
    out = []
    out.append(f"card: {name}; date: {time.strftime('%Y-%m-%d')}; copy bandwidth (read+write): "
               f"cudaMemcpy {bw_memcpy / 1e9:.0f} GB/s, torch copy kernel {bw_torch / 1e9:.0f} GB/s; floor uses {bw / 1e9:.0f}")
    out.append("")
    out.append("| name | B | T | Hk | Hv | K = V | ours (ms) | FLA, graph replay (ms) | floor (ms) | ours / floor | FLA / floor | FLA / ours |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        B, T, Hk, Hv, K, V = (int(r[x]) for x in ("B", "T", "Hk", "Hv", "K", "V"))
        k, w, u, g, h0 = fla_inputs(B, T, Hk, Hv, K, V)

        def fn():
            return chunk_gated_delta_rule_fwd_h(k, w, u, g=g, initial_state=h0, output_final_state=True,
                                                save_new_value=True, state_v_first=True)
        try:
            fla_ms = graph_time_ms(fn)
        except Exception as e:  # report, do not hide
            print(f"{r['name']}: FLA failed: {e}", flush=True)
            fla_ms = float("nan")
        ours = float(r["ours_ms"])
        floor = float(r["bytes"]) / bw * 1e3
        out.append(f"| {r['name']} | {B} | {T} | {Hk} | {Hv} | {K} | {ours:.3f} | {fla_ms:.3f} | {floor:.3f} | "
                   f"{ours / floor:.2f} | {fla_ms / floor:.2f} | {fla_ms / ours:.2f} |")
        print(out[-1], flush=True)
        del k, w, u, g, h0
        torch.cuda.empty_cache()
    text = "\n".join(out)
    print(text)
    if md:
        open(md, "w").write(text + "\n")


if __name__ == "__main__":
    main()

"""The README's benchmark tables, from ``benchmarks/results.json``.

Run:  python benchmarks/readme_tables.py   (after ``python benchmarks/bench_conv.py``)
Every figure is the JSON's, rounded as printed here; nothing is typed by hand.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _pair(row, a, b):
    return f"{row[a]:.1f} / {row[b]:.1f}" if a in row and b in row else "-"


def suite_tables(data, repeat):
    """One table per (dtype, threads), in the order the suite ran."""
    out, seen = [], []
    for row in data["results"]:
        key = (row["dtype"], row["threads"])
        if key not in seen:
            seen.append(key)
    for dtype, threads in seen:
        out.append(f"**{dtype}, {threads} thread{'s' if threads > 1 else ''}** (ms, median "
                   f"of {repeat}; ratio = tconv3d / fastest PyTorch layout, below 1 = tconv3d "
                   "faster; `out=`: the forward into a reused buffer)\n")
        out.append("| case | N, Cin→Cout, input, kernel, stride, padding | tconv3d fwd / fwd+bwd "
                   "| tconv3d fwd, `out=` | torch NCDHW fwd / fwd+bwd | torch channels_last_3d "
                   "fwd / fwd+bwd | tconv3d GFLOP/s | ratio fwd / fwd+bwd | fwd vs torch NCDHW |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in data["results"]:
            if (row["dtype"], row["threads"]) != (dtype, threads):
                continue
            out.append(
                f"| {row['case']} | {row['shape']} "
                f"| {_pair(row, 'tconv3d_fwd_ms', 'tconv3d_fwdbwd_ms')} "
                f"| {row['tconv3d_fwd_out_ms']:.1f} "
                f"| {_pair(row, 'torch_ncdhw_fwd_ms', 'torch_ncdhw_fwdbwd_ms')} "
                f"| {_pair(row, 'torch_cl3d_fwd_ms', 'torch_cl3d_fwdbwd_ms')} "
                f"| {row['tconv3d_fwd_gflops']:.0f} "
                f"| {row.get('ratio_fwd', float('nan')):.2f} / "
                f"{row.get('ratio_fwdbwd', float('nan')):.2f} "
                f"| {row.get('ratio_fwd_vs_torch_ncdhw', float('nan')):.2f} |")
        out.append("")
    return out


def groups_table(data):
    """Grouped layers of the PyTorch drop-in, per thread count."""
    out = []
    for threads, rows in data.get("groups_ms", {}).items():
        if not rows:
            continue
        out.append(f"**`groups=G`: `ConvTranspose3d(in, out, 4, stride=2, padding=1, "
                   f"groups=G)`, input 2x(in)x16^3, float32, {threads} thread"
                   f"{'s' if int(threads) > 1 else ''}** (ms, NCDHW / channels_last_3d; "
                   "ratio = tconv3d's slower layout / torch's faster one)\n")
        out.append("| in->out, G | torch fwd | tconv3d fwd | torch fwd+bwd | tconv3d fwd+bwd "
                   "| ratio fwd / fwd+bwd |")
        out.append("|---:|---:|---:|---:|---:|---:|")
        for g, row in rows.items():
            out.append(f"| {g} | {_pair(row, 'torch_ncdhw_fwd_ms', 'torch_cl3d_fwd_ms')} "
                       f"| {_pair(row, 'tconv3d_ncdhw_fwd_ms', 'tconv3d_cl3d_fwd_ms')} "
                       f"| {_pair(row, 'torch_ncdhw_fwdbwd_ms', 'torch_cl3d_fwdbwd_ms')} "
                       f"| {_pair(row, 'tconv3d_ncdhw_fwdbwd_ms', 'tconv3d_cl3d_fwdbwd_ms')} "
                       f"| {row['ratio_fwd']:.2f} / {row['ratio_fwdbwd']:.2f} |")
        out.append("")
    return out


def rates_table(data):
    """GFLOP/s of each pass on the compute-bound shapes against sgemm, per thread count."""
    out = []
    for threads, rows in data.get("compute_rates_gflops", {}).items():
        if not rows:
            continue
        out.append(f"**float32 rates, {threads} thread{'s' if int(threads) > 1 else ''}** "
                   "(GFLOP/s of each pass in its own call, and its ratio to the run's "
                   "OpenBLAS sgemm rate)\n")
        out.append("| case | fwd | grad_input | grad_kernel | sgemm "
                   "| x sgemm fwd / grad_input / grad_kernel |")
        out.append("|---|---:|---:|---:|---:|---:|")
        sgemm = data["sgemm_gflops"][threads]
        for case, r in rows.items():
            ratios = " / ".join(f"{r[key] / sgemm:.2f}" for key in ("fwd", "input", "kernel"))
            out.append(f"| {case} | {r['fwd']:.0f} | {r['input']:.0f} | {r['kernel']:.0f} "
                       f"| {sgemm:.0f} | {ratios} |")
        out.append("")
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(HERE, "results.json")
    with open(path) as f:
        data = json.load(f)
    print("\n".join(suite_tables(data, data.get("repeat", 11)) + groups_table(data)
                    + rates_table(data)))


if __name__ == "__main__":
    main()

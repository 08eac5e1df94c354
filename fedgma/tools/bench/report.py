"""The benchmark report as printed tables."""

from __future__ import annotations

from typing import Any


def print_tables(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB; command: {report['command']}")
    print(f"\nRound time, {report['clients']} clients per round, config {report['config']}")
    print(f"{'run':<24}{'median round s':>15}{'ratio to bare':>15}{'first round +s':>16}{'launch s':>10}{'peak RSS GB':>13}")
    for name, r in report["round_time"].items():
        print(f"{name:<24}{r['median_round_s']:>15.2f}{r['ratio_to_bare']:>15.3f}{r['first_round_extra_s']:>16.2f}"
              f"{r.get('launch_overhead_s', 0):>10.1f}{r.get('peak_rss_bytes', 0) / 1e9:>13.2f}")
    print("\nOne aggregate_train call, 579,009-parameter CNN")
    print(f"{'K':>6}  {'strategy':<26}{'seconds':>10}{'x FedAvg':>10}{'x FedAdam':>11}")
    for a in report["aggregation"]:
        print(f"{a['k']:>6}  {a['strategy']:<26}{a['seconds']:>10.4f}{a['ratio_to_fedavg']:>10.2f}"
              f"{a['ratio_to_fedadam']:>11.2f}")
    print_memory(report)
    print_throughput(report)
    print_gpu(report)


def print_throughput(report: dict[str, Any]) -> None:
    if "throughput" not in report:
        return
    t = report["throughput"]
    print(f"\nOne core, GFLOP/s: matmul ceiling fp32 {t['matmul_fp32_gflops']:.0f}, bf16 {t['matmul_bf16_gflops']:.0f}; "
          f"local training ({t['train_gflop']:.1f} GFLOP) fp32 {t['train_fp32_gflops']:.0f} "
          f"({t['train_fp32_of_ceiling']:.0%} of ceiling), bf16 autocast {t['train_bf16_gflops']:.0f} "
          f"({t['train_bf16_of_ceiling']:.0%} of ceiling); bf16 speed-up {t['bf16_speedup']:.2f}x; "
          f"against the seed's layer order and glibc's allocator: {t['app_speedup_fp32']:.2f}x in fp32, "
          f"{t['app_speedup_bf16']:.2f}x in bf16")
    for precision in ("fp32", "bf16"):
        shares = ", ".join(f"{name} {share:.0%}" for name, share in t[f"time_by_operator_{precision}"].items())
        print(f"  {precision} local training, time by operator: {shares}")


def print_gpu(report: dict[str, Any]) -> None:
    if "gpu" not in report:
        return
    print(f"\nGPU sharing, {report['clients']} clients per round (FedAvg)")
    print(f"{'GPU/client':>11}{'at once':>9}{'median round s':>16}{'ratio to bare':>15}{'GPU MB/client':>15}")
    for g in report["gpu"]:
        print(f"{g['gpus_per_client']:>11}{g['clients_at_once']:>9}{g['median_round_s']:>16.2f}"
              f"{g['ratio_to_bare']:>15.3f}{g['gpu_bytes_per_client'] / 2**20:>15.0f}")
    if "seed_experiment" in report:
        e = report["seed_experiment"]
        print(f"\nSeed experiment (configs/seed-repo.toml, 50 rounds), {e['gpus_per_client']} GPU per client: "
              f"{e['wall_s']:.0f} s end to end, final OOD accuracy {e['final_ood_accuracy']:.4f}")


def print_memory(report: dict[str, Any]) -> None:
    if "memory" in report:
        rss = [b / 1e9 for b in report["memory"]["rss_at_round_end_bytes"]]
        print(f"\nProcess-tree RSS at the end of each round (GB): {' '.join(f'{r:.2f}' for r in rss)}")

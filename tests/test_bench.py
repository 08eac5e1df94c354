"""The benchmark command on a tiny setting writes a well-formed report."""

import json

import numpy as np
import pytest
from conftest import ONE_ACTOR

from fedgma.tools.bench.__main__ import main
from fedgma.tools.bench.runs import round_summary
from fedgma.tools.bench.aggregation import STRATEGIES
from fedgma.tools.local_flower import run_config_arg
from fedgma.tools.processes import parse_gpu_apps
from fedgma.settings import ConfigError


def test_round_summary_sets_the_first_round_apart():
    summary = round_summary([10.0, 2.0, 4.0, 3.0])
    assert summary["median_round_s"] == 3.0 and summary["first_round_extra_s"] == 7.0


def test_run_config_arg_quotes_strings_only():
    assert run_config_arg({"a": "x y", "b": True, "c": 0.5, "d": 3}) == "a='x y' b=true c=0.5 d=3"


def test_gpu_memory_is_read_per_process_from_nvidia_smi_lines():
    listing = "1234, 812\n99, 4000\n[Not Supported], 1\n5678, 1024\n"
    assert parse_gpu_apps(listing, {1234, 5678, 7}) == {1234: 812 * 2**20, 5678: 1024 * 2**20}
    assert parse_gpu_apps("", {1}) == {}


def test_benchmark_on_cuda_without_a_gpu_stops_before_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="'device' is 'cuda'"):
        main(["--device", "cuda", "--out", str(tmp_path)])
    assert not (tmp_path / "report.json").exists()


@pytest.mark.simulation
def test_tiny_benchmark_writes_report_and_plot(tmp_path, mnist_dir, capsys):
    main(["--data-dir", str(mnist_dir), "--out", str(tmp_path), "--clients", "2", "--rounds", "2",
          "--client-examples", "16", "--test-examples", "50", "--aggregation-k", "2,3", "--memory-rounds", "0",
          "--throughput-images", "20", "--cpus-per-client", str(ONE_ACTOR)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["machine"]["cores"] >= 1 and report["versions"]["flwr"]
    assert set(report["round_time"]) == {"bare loop (fedavg)", "simulation (fedavg)", "simulation (fedgma)"}
    for name, entry in report["round_time"].items():
        assert entry["median_round_s"] > 0 and len(entry["rounds_s"]) == 2
        assert entry["ratio_to_bare"] == pytest.approx(
            entry["median_round_s"] / report["round_time"]["bare loop (fedavg)"]["median_round_s"])
        if name.startswith("simulation"):
            assert entry["peak_rss_bytes"] > 0 and entry["launch_overhead_s"] > 0
    assert [(a["k"], a["strategy"]) for a in report["aggregation"]] == [
        (k, s) for k in (2, 3) for s in STRATEGIES]
    assert all(a["seconds"] > 0 for a in report["aggregation"])
    # memory over rounds is measured by the same function as the round times (left out here: one run less)
    memory = report["round_time"]["simulation (fedgma)"]["rss_at_round_end_bytes"]
    assert "memory" not in report and len(memory) == 2 and all(memory)
    assert "One aggregate_train call" in capsys.readouterr().out
    throughput = report["throughput"]
    assert throughput["train_gflop"] > 0 and all(throughput[f"{kind}_{p}_gflops"] > 0
                                                 for kind in ("matmul", "train", "train_as_seed") for p in ("fp32", "bf16"))
    shares = throughput["time_by_operator_fp32"]
    assert "aten::convolution_backward" in shares and sum(shares.values()) == pytest.approx(1.0)
    assert report["config"]["device"] == "auto" and "gpu" not in report  # no GPU table on a CPU-only machine


def test_the_scale_benchmark_finds_the_one_time_order_cost_the_guard_logs(caplog):
    import logging

    from conftest import grid_with, simulated_nodes
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from fedgma.strategies import ReplyGuard
    from fedgma.strategies.records import encode
    from fedgma.tools.bench.scale import ORDER_READ

    caplog.set_level(logging.INFO, logger="flwr")  # the benchmark's main() in this process sets it to WARNING
    nodes = list(range(10, 30))
    guard = ReplyGuard(FedAvg(fraction_train=0.5, min_available_nodes=1, min_train_nodes=1),
                       reproducible_sampling=True)
    guard.configure_train(1, encode({"w": np.zeros(2, np.float32)}), ConfigRecord(),
                          grid_with(nodes, simulated_nodes(nodes)))
    found = ORDER_READ.search(caplog.text)
    assert found and int(found.group(1)) == len(nodes) and float(found.group(2)) >= 0

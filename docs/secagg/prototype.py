"""Prototype: Flower 1.42 SecAgg+ with extra "sign" arrays (FedGMA), in simulation.

Run:  python docs/secagg/prototype.py   (from the repository root, in the README's virtual environment)

Everything runs inside TWO `flwr.simulation.run_simulation` calls (one Ray start each):
  SIM 1 (4 supernodes, legacy ClientApp(client_fn=..., mods=[size_mod, fail_mod, secaggplus_mod])):
     one ServerApp whose @app.main() runs many small "experiments" back to back, each
     with its own LegacyContext + strategy + DefaultWorkflow(fit_workflow=...).
  SIM 2 (3 supernodes, Message-API ClientApp with @app.train() + secaggplus_mod).
Results are printed at the end and written to results.json next to this file.
"""

import json
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TMP = os.path.join(HERE, "tmp")
os.makedirs(TMP, exist_ok=True)
os.environ.setdefault("FLWR_HOME", os.path.join(TMP, "flwr_home"))
os.environ.setdefault("RAY_TMPDIR", os.path.join(TMP, "ray"))
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.makedirs(os.environ["FLWR_HOME"], exist_ok=True)
os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)
SIZES_FILE = os.path.join(TMP, "sizes.jsonl")

import numpy as np  # noqa: E402

# ---- exact imports that work in Flower 1.42.0 -------------------------------------
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402  (ClientApp lazily from flwr.clientapp)
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import FitIns, FitRes, Code, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.common.serde import recorddict_to_proto  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key  # noqa: E402
from flwr.compat.common import recorddict_compat as compat  # noqa: E402
from flwr.server import LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

BASE_N = [30, 50, 70, 90]  # num_examples of partition 0..3
TAU = 0.5  # GMA threshold used in the demo


# =====================================================================================
# Deterministic "training": Delta_k depends only on (partition id, seed, shapes)
# =====================================================================================
def client_delta(pid, seed, shapes):
    rng_common = np.random.default_rng(1000 + seed)
    rng = np.random.default_rng(10_000 * (seed + 1) + pid)
    out = []
    for shp in shapes:
        common = rng_common.normal(0.0, 0.05, shp)  # shared direction -> partial agreement
        out.append((common + rng.normal(0.0, 0.1, shp)).astype(np.float32))
    return out


def init_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, s).astype(np.float32) for s in shapes]


SMALL_SHAPES = [(4, 6), (6,)]  # N = 30 float32 parameters
BIG_SHAPES = [(100, 100)]  # N = 10_000 float32 parameters (byte measurement)


# =====================================================================================
# Client side
# =====================================================================================
class GMAClient(NumPyClient):
    def __init__(self, pid):
        self.pid = pid

    def fit(self, parameters, config):
        failing = str(self.pid) in str(config.get("fail_pids", "")).split(",")
        if failing and config.get("fail_stage", "fit") == "fit":
            raise RuntimeError(f"simulated crash of partition {self.pid} inside fit()")
        if failing and config.get("fail_stage") == "exit":
            os._exit(1)  # kill the Ray actor process
        m = len(parameters) // 2 if config.get("signs_in", False) else len(parameters)
        w = [p.astype(np.float32) for p in parameters[:m]]  # drop incoming sign slots
        d = client_delta(self.pid, int(config["seed"]), [x.shape for x in w])
        new_w = [wi + di for wi, di in zip(w, d)]
        out = list(new_w)
        if config.get("send_signs", False):
            out += [np.sign(di).astype(np.float32) for di in d]  # (= sign of new_w - w)
        n = int(round(BASE_N[self.pid] * float(config.get("n_mult", 1.0))))
        return out, n, {"pid": self.pid}


def client_fn(context: Context):
    return GMAClient(int(context.node_config["partition-id"])).to_client()


def size_mod(msg: Message, ctxt: Context, call_next):
    """Outermost mod: record serialized size of every TRAIN message in/out."""
    stage = "plain"
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE))
    in_b = recorddict_to_proto(msg.content).ByteSize()
    out = call_next(msg, ctxt)
    out_b = recorddict_to_proto(out.content).ByteSize() if out.has_content() else 0
    with open(SIZES_FILE, "a") as f:
        f.write(json.dumps({"pid": int(ctxt.node_config["partition-id"]), "stage": stage,
                            "in": in_b, "out": out_b}) + "\n")
    return out


def fail_mod(msg: Message, ctxt: Context, call_next):
    """Simulate a client that dies in a given SecAgg+ stage (other than fit)."""
    cfgs = msg.content.config_records
    stage = cfgs[RECORD_KEY_CONFIGS].get(Key.STAGE) if RECORD_KEY_CONFIGS in cfgs else None
    pid = int(ctxt.node_config["partition-id"])
    if "fitins.config" in cfgs:  # stage collect_masked_vectors carries the FitIns
        fc = cfgs["fitins.config"]
        ctxt.state.config_records["fail"] = ConfigRecord(
            {"stage": str(fc.get("fail_stage", ""))
             if str(pid) in str(fc.get("fail_pids", "")).split(",") else ""})
    if stage == "unmask" and "fail" in ctxt.state.config_records:
        if ctxt.state.config_records["fail"]["stage"] == "unmask":
            ctxt.state.config_records["fail"] = ConfigRecord({"stage": ""})
            raise RuntimeError(f"simulated crash of partition {pid} in unmask stage")
    return call_next(msg, ctxt)


def maybe_secaggplus_mod(msg: Message, ctxt: Context, call_next):
    """secaggplus_mod intercepts EVERY TRAIN message and raises KeyError 'secaggplus_configs'
    on a plain FedAvg fit message; only route SecAgg+ messages through it."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


legacy_client_app = ClientApp(client_fn=client_fn,
                              mods=[size_mod, fail_mod, maybe_secaggplus_mod])


# =====================================================================================
# Server side: legacy strategy that implements the FedGMA mask on the aggregate
# =====================================================================================
class GMAFedAvg(FedAvg):
    """Selects the `n_sample` clients with smallest node_id; expects [w..., sign...]."""

    def __init__(self, init, n_sample, send_signs=True, n_mult=1.0, fail=None, seed0=0, **kw):
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n_sample,
                         min_available_clients=n_sample,
                         initial_parameters=ndarrays_to_parameters(init), **kw)
        self.n_sample, self.send_signs, self.n_mult = n_sample, send_signs, n_mult
        self.fail, self.seed0 = fail or {}, seed0
        self.m = len(init)
        self.log = []  # one dict per round

    def configure_fit(self, server_round, parameters, client_manager):
        # NB: do not use client_manager.wait_for(): in the compat layer only all()/sample()/
        # num_available() refresh the node list (server/compat/app_utils.py), wait_for()
        # would block until the 5 s background refresh.
        proxies = sorted(client_manager.all().values(), key=lambda p: p.node_id)[: self.n_sample]
        assert len(proxies) == self.n_sample, len(proxies)
        cfg = {"seed": self.seed0 + server_round, "send_signs": self.send_signs,
               "n_mult": float(self.n_mult), "signs_in": False}
        cfg.update(self.fail)
        self._w_t = parameters_to_ndarrays(parameters)
        self._cfg = cfg
        return [(p, FitIns(parameters, cfg)) for p in proxies]

    def aggregate_fit(self, server_round, results, failures):
        if not results:  # e.g. every client failed in a plain round
            self.log.append({"round": server_round, "n_results": 0, "n_failures": len(failures)})
            return None, {}
        w_t = [x.astype(np.float64) for x in self._w_t]
        m = self.m
        rec = {"round": server_round, "n_results": len(results), "n_failures": len(failures),
               "num_examples": [r.num_examples for _, r in results],
               "pids_from_metrics": [r.metrics.get("pid") for _, r in results]}
        arrs = [parameters_to_ndarrays(r.parameters) for _, r in results]
        rec["n_arrays_per_result"] = len(arrs[0]) if arrs else 0
        rec["dtype"] = str(arrs[0][0].dtype) if arrs else None
        rec["all_results_identical"] = bool(all(
            all(np.array_equal(a, b) for a, b in zip(arrs[0], x)) for x in arrs))
        # Weighted average exactly like FedAvg (for SecAgg+ all entries are identical)
        ns = np.array([r.num_examples for _, r in results], dtype=np.float64)
        agg = [sum(n * x[i].astype(np.float64) for n, x in zip(ns, arrs)) / ns.sum()
               for i in range(len(arrs[0]))]
        # Exact reference from the deterministic client generator (pids leak via metrics!)
        pids = [int(p) for p in rec["pids_from_metrics"]]
        n_true = np.array([round(BASE_N[p] * self.n_mult) for p in pids], dtype=np.float64)
        deltas = [client_delta(p, self._cfg["seed"], [x.shape for x in w_t]) for p in pids]
        ref_w = [sum(n * (w_t[i] + d[i].astype(np.float64)) for n, d in zip(n_true, deltas)) / n_true.sum()
                 for i in range(m)]
        ref_s = [sum(n * np.sign(d[i]).astype(np.float64) for n, d in zip(n_true, deltas)) / n_true.sum()
                 for i in range(m)]
        rec["maxdev_weights"] = float(max(np.max(np.abs(a - r)) for a, r in zip(agg[:m], ref_w)))
        new_w = agg[:m]
        if self.send_signs and len(agg) == 2 * m:
            s_bar = agg[m:]
            rec["maxdev_signs"] = float(max(np.max(np.abs(a - r)) for a, r in zip(s_bar, ref_s)))
            # ---- FedGMA on the securely aggregated quantities ----
            delta_bar = [a - w for a, w in zip(agg[:m], w_t)]
            A = [np.abs(s) for s in s_bar]
            mask = [np.where(a >= TAU, 1.0, a) for a in A]
            new_w = [w + mk * d for w, mk, d in zip(w_t, mask, delta_bar)]
            A_ref = [np.abs(s) for s in ref_s]
            mask_ref = [np.where(a >= TAU, 1.0, a) for a in A_ref]
            dref = [r - w for r, w in zip(ref_w, w_t)]
            gma_ref = [w + mk * d for w, mk, d in zip(w_t, mask_ref, dref)]
            rec["maxdev_gma_update"] = float(max(np.max(np.abs(a - b)) for a, b in zip(new_w, gma_ref)))
            rec["mask_decisions_flipped"] = int(sum(np.sum((a >= TAU) != (b >= TAU)) for a, b in zip(A, A_ref)))
            rec["agreement_example"] = [round(float(v), 6) for v in A[1][:4]]
            rec["agreement_ref_example"] = [round(float(v), 6) for v in A_ref[1][:4]]
        rec["aggregate_example"] = [round(float(v), 7) for v in new_w[-1].ravel()[:4]]
        self.log.append(rec)
        return ndarrays_to_parameters([x.astype(np.float32) for x in new_w]), {}


def read_sizes():
    if not os.path.exists(SIZES_FILE):
        return {}
    per = {}
    with open(SIZES_FILE) as f:
        for line in f:
            r = json.loads(line)
            k = r["stage"]
            per.setdefault(k, {"in": [], "out": []})
            per[k]["in"].append(r["in"])
            per[k]["out"].append(r["out"])
    os.remove(SIZES_FILE)
    return {k: {"in_mean": float(np.mean(v["in"])), "out_mean": float(np.mean(v["out"])),
                "count": len(v["in"])} for k, v in per.items()}


RESULTS = {}


def run_exp(name, grid, context, strategy, fit_workflow=None, num_rounds=1):
    t0 = time.time()
    if os.path.exists(SIZES_FILE):
        os.remove(SIZES_FILE)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds),
                           strategy=strategy)
    err = None
    try:
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    except Exception as ex:  # keep going with the other experiments
        err = f"{type(ex).__name__}: {ex}"
    if isinstance(fit_workflow, SecAggPlusWorkflow):
        for rec in strategy.log:  # analytic worst case of the stochastic-rounding error
            ns = rec.get("num_examples") or [1]
            rec["predicted_max_err"] = (len(ns) * 2 * fit_workflow.clipping_range
                                        * fit_workflow.max_weight
                                        / (fit_workflow.quantization_range * sum(ns)))
            rec["effective_clip_on_x_per_client"] = [
                round(fit_workflow.clipping_range * fit_workflow.max_weight / n, 3) for n in ns]
    RESULTS[name] = {"rounds": strategy.log, "error": err, "num_rounds": num_rounds,
                     "halted_rounds": num_rounds - sum(1 for r in strategy.log if r["n_results"]), "sizes": read_sizes(),
                     "seconds": round(time.time() - t0, 2),
                     "final_params": None}
    if legacy.state.array_records.get(MAIN_PARAMS_RECORD) is not None and strategy.log \
            and "N10000" not in name:
        fp = compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], True)
        RESULTS[name]["final_params"] = [a.tolist() for a in parameters_to_ndarrays(fp)]
    print(f"### {name}: {time.time() - t0:.1f}s, rounds aggregated="
          f"{RESULTS[name]['num_rounds'] - RESULTS[name]['halted_rounds']}/{num_rounds} err={err}",
          flush=True)


def sa(**kw):
    """SecAggPlusWorkflow with timeout safety net; note clipping_range MUST be a float."""
    kw.setdefault("timeout", 60.0)
    return SecAggPlusWorkflow(**kw)


server_app = ServerApp()


@server_app.main()
def main(grid, context: Context) -> None:
    init = init_params(SMALL_SHAPES)
    # ---------- Q1/Q2/Q3: plain vs SecAgg+, 3 clients, 2 rounds, weights + signs ----
    run_exp("plain_fedavg_3c_2r", grid, context, GMAFedAvg(init, 3), None, num_rounds=2)
    run_exp("secaggplus_3c_2r", grid, context, GMAFedAvg(init, 3),
            sa(num_shares=3, reconstruction_threshold=2, max_weight=100.0,
               clipping_range=8.0, quantization_range=2**22), num_rounds=2)
    run_exp("secaggplus_3c_2r_defaults_mw1000", grid, context, GMAFedAvg(init, 3),
            sa(num_shares=3, reconstruction_threshold=2), num_rounds=2)
    # ---------- Q1: sweep clipping_range / quantization_range (1 round each) ----------
    for c in [0.5, 1.0, 2.0, 8.0, 64.0]:
        run_exp(f"sweep_c{c}_T2^22_mw100", grid, context, GMAFedAvg(init, 3),
                sa(num_shares=3, reconstruction_threshold=2, max_weight=100.0,
                   clipping_range=c, quantization_range=2**22))
    for logt in [12, 16, 26]:
        run_exp(f"sweep_c8.0_T2^{logt}_mw100", grid, context, GMAFedAvg(init, 3),
                sa(num_shares=3, reconstruction_threshold=2, max_weight=100.0,
                   clipping_range=8.0, quantization_range=2**logt))
    # ---------- Q2: max_weight vs num_examples ----------
    for mw in [10000.0, 50.0, 10.0]:
        run_exp(f"maxweight_mw{mw}_c8.0", grid, context, GMAFedAvg(init, 3),
                sa(num_shares=3, reconstruction_threshold=2, max_weight=mw,
                   clipping_range=8.0, quantization_range=2**22))
    # ---------- pitfall: integer clipping_range ----------
    run_exp("pitfall_int_clipping_range", grid, context, GMAFedAvg(init, 3),
            sa(num_shares=3, reconstruction_threshold=2, max_weight=100.0, clipping_range=8))
    # ---------- Q4: dropout with 4 clients, reconstruction_threshold=3 ----------
    kw4 = dict(num_shares=4, reconstruction_threshold=3, max_weight=100.0, clipping_range=8.0)
    run_exp("dropout_none_4c", grid, context, GMAFedAvg(init, 4), sa(**kw4))
    run_exp("dropout_fit_exception_4c", grid, context,
            GMAFedAvg(init, 4, fail={"fail_pids": "3", "fail_stage": "fit"}), sa(**kw4))
    run_exp("dropout_unmask_exception_4c", grid, context,
            GMAFedAvg(init, 4, fail={"fail_pids": "2", "fail_stage": "unmask"}), sa(**kw4))
    # two failures: 4 clients, threshold 3 -> expect halt
    run_exp("dropout_two_clients_4c", grid, context,
            GMAFedAvg(init, 4, fail={"fail_pids": "2,3", "fail_stage": "fit"}), sa(**kw4))
    # ---------- Q6: bytes for a N=10_000 float32 model without signs ----------
    big = init_params(BIG_SHAPES)
    run_exp("bytes_plain_N10000", grid, context, GMAFedAvg(big, 3, send_signs=False), None)
    run_exp("bytes_secagg_N10000", grid, context, GMAFedAvg(big, 3, send_signs=False),
            sa(num_shares=3, reconstruction_threshold=2, max_weight=100.0, clipping_range=8.0))
    # ---------- Q4b: client process dies (os._exit in the Ray actor) ----------
    if os.environ.get("PROTO_SKIP_EXIT") != "1":
        run_exp("dropout_process_exit_4c", grid, context,
                GMAFedAvg(init, 4, fail={"fail_pids": "3", "fail_stage": "exit"}), sa(**kw4))


# =====================================================================================
# SIM 2: Message-API ClientApp (@app.train()) + secaggplus_mod
# =====================================================================================
msg_client_app = ClientApp(mods=[secaggplus_mod])


@msg_client_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    params = parameters_to_ndarrays(fitins.parameters)
    d = client_delta(pid, int(fitins.config["seed"]), [p.shape for p in params])
    out = [p + di for p, di in zip(params, d)] + [np.sign(di) for di in d]
    n = BASE_N[pid]
    if fitins.config.get("native_reply", False):
        # "Modern" Message-API reply: arrays + metrics records
        content = RecordDict({"arrays": ArrayRecord(out),
                              "metrics": MetricRecord({"num-examples": n, "pid": pid})})
    else:
        # Reply in the legacy FitRes layout, which secaggplus_mod requires
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out), n, {"pid": pid})
        content = compat.fitres_to_recorddict(fitres, keep_input=True)
    return Message(content, reply_to=msg)


class _NativeFlag(GMAFedAvg):
    def configure_fit(self, server_round, parameters, client_manager):
        ins = super().configure_fit(server_round, parameters, client_manager)
        for _, fi in ins:
            fi.config["native_reply"] = True
        return ins


server_app2 = ServerApp()


@server_app2.main()
def main2(grid, context: Context) -> None:
    init = init_params(SMALL_SHAPES)
    kw = dict(num_shares=3, reconstruction_threshold=2, max_weight=100.0, clipping_range=8.0)
    run_exp("msgapi_train_legacy_reply", grid, context, GMAFedAvg(init, 3), sa(**kw))
    run_exp("msgapi_train_native_reply", grid, context, _NativeFlag(init, 3), sa(**kw))
    # pitfall: a plain (non-SecAgg) fit round through a ClientApp that has secaggplus_mod
    run_exp("pitfall_plain_round_through_secaggplus_mod", grid, context, GMAFedAvg(init, 3), None)


# =====================================================================================
def summarize():
    print("\n================ SUMMARY ================")
    for name, r in RESULTS.items():
        print(f"\n[{name}] error={r['error']} rounds_without_aggregate_fit="
              f"{r['halted_rounds']}/{r['num_rounds']} time={r['seconds']}s")
        for rd in r["rounds"]:
            keys = ["round", "n_results", "n_failures", "num_examples", "pids_from_metrics",
                    "n_arrays_per_result", "dtype", "all_results_identical", "maxdev_weights",
                    "maxdev_signs", "predicted_max_err", "effective_clip_on_x_per_client", "maxdev_gma_update", "mask_decisions_flipped",
                    "agreement_example", "agreement_ref_example", "aggregate_example"]
            print("   " + ", ".join(f"{k}={rd[k]}" for k in keys if k in rd))
        if r["sizes"]:
            tot_out = sum(v["out_mean"] for v in r["sizes"].values())
            tot_in = sum(v["in_mean"] for v in r["sizes"].values())
            print("   bytes/client/round (serialized RecordDict): "
                  + "; ".join(f"{k}: in={v['in_mean']:.0f} out={v['out_mean']:.0f} (n={v['count']})"
                              for k, v in r["sizes"].items())
                  + f" | TOTAL in={tot_in:.0f} out={tot_out:.0f}")
    if "plain_fedavg_3c_2r" in RESULTS and "secaggplus_3c_2r" in RESULTS:
        a = RESULTS["plain_fedavg_3c_2r"]["final_params"]
        b = RESULTS["secaggplus_3c_2r"]["final_params"]
        if a and b:
            dev = max(float(np.max(np.abs(np.array(x) - np.array(y)))) for x, y in zip(a, b))
            print(f"\nFinal params after 2 rounds, SecAgg+ vs plain FedAvg(+GMA): max |diff| = {dev:.3e}")
            RESULTS["final_dev_secagg_vs_plain"] = dev


if __name__ == "__main__":
    logging.getLogger("flwr").setLevel(logging.WARNING)
    backend = {"client_resources": {"num_cpus": 1},
               "init_args": {"num_cpus": 2, "include_dashboard": False}}
    t0 = time.time()
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("all", "1"):
        run_simulation(server_app=server_app, client_app=legacy_client_app,
                       num_supernodes=4, backend_config=backend)
        print(f"SIM 1 done after {time.time() - t0:.1f}s", flush=True)
    if which in ("all", "2"):
        run_simulation(server_app=server_app2, client_app=msg_client_app,
                       num_supernodes=3, backend_config=backend)
        print(f"SIM 2 done after {time.time() - t0:.1f}s", flush=True)
    summarize()
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    print(f"\nTOTAL wall time {time.time() - t0:.1f}s")

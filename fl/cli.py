"""``fedshield`` command line: parses arguments, loads a config, calls library functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fl.backends import BackendParameterError
from fl.config import ExperimentConfig
from fl.errors import ConfigError, FLError


def _parser() -> argparse.ArgumentParser:
    from fl import __version__

    p = argparse.ArgumentParser(prog="fedshield", description="Privacy-hardened federated learning.")
    p.add_argument("--version", action="version", version=f"fedshield {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated training experiment")
    run.add_argument("config", nargs="?", help="TOML config file (default: built-in breast cancer, 10 hospitals)")
    run.add_argument("--out", default="runs/latest", help="output directory (default: %(default)s)")
    run.add_argument("--rounds", type=int, help="override run.rounds")
    run.add_argument("--seed", type=int, help="override run.seed")
    run.add_argument("--fresh", action="store_true", help="ignore and delete an existing checkpoint in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess",
                     help="where client work runs: this process, or Ray actors on this machine's cores (same results)")
    run.add_argument("--workers", type=int, help="Ray actors (default: one per CPU)")
    run.add_argument("--ray-address", help="join this running Ray cluster (e.g. HEAD_IP:6379 or 'auto') "
                     "instead of starting a local instance; fedshield must be importable on every node")
    budget = sub.add_parser("budget", help="plan the privacy budget of a config before running it")
    budget.add_argument("config", nargs="?")
    budget.add_argument("--points", type=int, default=10, help="rounds at which to print epsilon")
    audit = sub.add_parser(
        "audit", help="train under a grid of defences, attack each pipeline, report utility, epsilon and leakage"
    )
    audit.add_argument("config", nargs="?", help="audit TOML (default: built-in hospitals + digits grid)")
    audit.add_argument("--out", default="runs/audit", help="output directory (default: %(default)s)")
    audit.add_argument("--seeds", type=int, nargs="+", help="override audit.seeds")
    audit.add_argument("--fresh", action="store_true", help="discard finished cells in --out and start again")
    audit.add_argument("--no-progress", action="store_true", help="no progress bars")
    audit.add_argument("--print-config", action="store_true", help="print the audit config as TOML and exit")
    show = sub.add_parser("show-config", help="print a config (default: the built-in one) as validated TOML")
    show.add_argument("config", nargs="?")
    return p


def _load(path: str | None) -> ExperimentConfig:
    from fl.config import default_config, load_config

    return load_config(path) if path else default_config()


def _cmd_run(args: argparse.Namespace) -> int:
    from fl.report import write_report
    from fl.simulation import CHECKPOINT, Simulation

    config = _load(args.config)
    overrides: dict[str, object] = {}
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.seed is not None:
        overrides["seed"] = args.seed
    if overrides:
        config = config.replace(run=overrides)
    if config.run.torch_threads:
        import torch

        # simulated clients train small models one after another: extra intra-op threads only add overhead
        torch.set_num_threads(config.run.torch_threads)
    if args.backend != "ray" and (args.ray_address is not None or args.workers is not None):
        raise BackendParameterError("--ray-address/--workers", "only with --backend ray")
    out_dir = Path(args.out)
    if args.fresh and (out_dir / CHECKPOINT).exists():
        (out_dir / CHECKPOINT).unlink()
    if args.backend == "ray":
        from fl.backends.ray import RaySimulation

        with RaySimulation(config, out_dir=out_dir, progress=not args.no_progress, num_workers=args.workers,
                           address=args.ray_address) as ray_sim:
            out = ray_sim.run()
    else:
        out = Simulation(config, out_dir=out_dir, progress=not args.no_progress).run()
    write_report(out, out_dir)
    key = "test_accuracy" if "test_accuracy" in out.final_metrics else "test_r2"
    line = f"federated {key} = {out.final_metrics[key]:.4f}"
    if out.centralized:
        line += f", centralized = {out.centralized[key]:.4f}"
    print(line)
    print(f"report: {out_dir / 'report.md'}  results: {out_dir / 'results.json'}  plot: {out_dir / 'accuracy.png'}")
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    from dp.errors import DPError
    from fl.privacy import DPSettings, SamplingInfo, calibrate, epsilon_curve

    config = _load(args.config)
    d = config.dp
    if d.mode == "none":
        print("dp.mode is 'none': this run spends no privacy budget (and protects nothing). Set [dp] mode.")
        return 0
    try:
        settings = DPSettings.from_config(d)
        sampling = SamplingInfo.from_config(config)
        n, per_round = sampling.num_clients, sampling.per_round
        distributed = None
        factory = None
        if d.mode == "distributed":
            from dp.distributed import DistributedParams
            from fl.layout import ParamLayout
            from fl.models import build_model
            from fl.simulation import build_federated_data

            data = build_federated_data(config)
            outputs = data.num_classes if data.task == "classification" else 1
            dim = ParamLayout.from_module(
                build_model(config.model.name, data.feature_shape, outputs, hidden=config.model.hidden,
                            activation=config.model.activation)
            ).size

            def factory(z: float) -> DistributedParams:
                return DistributedParams.for_noise_multiplier(
                    dim=dim, clip=d.clip, noise_multiplier=z,
                    expected_clients=max(round(sampling.expected_cohort), 1), bits=d.bits, noise=d.noise,  # type: ignore[arg-type]
                )
        z = calibrate(settings, sampling, config.run.rounds, factory)
        if factory is not None:
            distributed = factory(z)
        curve = epsilon_curve(settings, sampling, z, config.run.rounds, args.points, distributed)
    except DPError as exc:
        print(f"fedshield: error: {exc}", file=sys.stderr)
        return 2
    where = "calibrated" if not d.noise_multiplier else "configured"
    sampled = (f"Poisson q = {config.sampling.rate:g}" if config.sampling.method == "poisson"
               else f"{per_round} of {n} clients per round")
    print(f"DP mode {d.mode}, {d.accountant.upper()} accountant, delta = {d.delta:g}, {sampled}, clip {d.clip:g}")
    print(f"noise multiplier ({where}): {z:.4f}; budget epsilon = {settings.budget:g}")
    print(f"{'round':>8} {'epsilon':>10}")
    for t, eps in curve:
        flag = "  <- over budget: the run stops before this round" if eps > settings.budget else ""
        print(f"{t:>8} {eps:>10.4f}{flag}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    # The audit harness lives in `attacks` (it composes fl with the attacks); imported only for this command.
    import dataclasses

    import torch

    from attacks.harness import default_audit_config, load_audit_config, run_audit

    config = load_audit_config(args.config) if args.config else default_audit_config()
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise ConfigError("--seeds", f"must be distinct integers >= 0, got {args.seeds}")
        config = dataclasses.replace(config, seeds=tuple(args.seeds))
    if args.print_config:
        print(config.to_toml(), end="")
        return 0
    torch.set_num_threads(1)  # many small models one after another: extra intra-op threads only add overhead
    out_dir = Path(args.out)
    from attacks.metrics import AttackError

    try:
        results = run_audit(config, out_dir, progress=not args.no_progress, fresh=args.fresh)
    except AttackError as exc:
        print(f"fedshield: error: {exc}", file=sys.stderr)
        return 2
    for check in results["checks"]:
        mark = {True: "PASS", False: "FAIL", None: "INFO"}[check["holds"]]
        print(f"[{mark}] {check['task']}: {check['claim']} - {check['detail']}")
    print(f"{len(results['cells'])} cells in {results['timing']['grid_wall_s']:.0f} s")
    print(f"report: {out_dir / 'report.md'}  html: {out_dir / 'report.html'}  results: {out_dir / 'results.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "budget":
            return _cmd_budget(args)
        if args.command == "audit":
            return _cmd_audit(args)
        if args.command == "show-config":
            print(_load(args.config).to_toml())
            return 0
    except FLError as exc:
        print(f"fedshield: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

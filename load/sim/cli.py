"""`symphony sim ...`: run, capacity, min-slots, compare, autoscale, fuzz, control. Human tables by default,
`--json` for machines. Progress of long searches goes to stderr."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor

import msgspec

from load.bound import analytic_bound
from load.sim.records import SimOptions
from load.sim.report import SimReport
from load.sim.search import CapacityResult, MinSlotsResult, capacity, min_slots, run_report
from load.workload import classes_of_slots, load_workload, slot_mix
from shard.core.config import CoreConfig
from shard.core.policies import DEFAULT_POLICY, POLICIES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser("sim", help="simulate policies on workloads in virtual time")
    commands = sim.add_subparsers(dest="sim_command", required=True)

    def common(p: argparse.ArgumentParser, *, policy: bool = True) -> None:
        p.add_argument("workload", help="a workload TOML file or a built-in name (example, many-model, bursty)")
        if policy:
            p.add_argument("--policy", default=DEFAULT_POLICY, choices=list(POLICIES))
        p.add_argument("--slots", type=int, default=None, help="slots (default: the workload's)")
        p.add_argument("--seed", type=int, default=None, help="seed (default: the workload's)")
        p.add_argument("--noise", type=float, default=0.0, help="relative std of slot execution time")
        p.add_argument("--shards", type=int, default=1, help="partition models and slots across this many shards")
        p.add_argument("--epoch-s", type=float, default=0.0, help="with --shards: re-allocate slots every epoch")
        p.add_argument("--shard-rps-max", type=float, default=0.0,
                       help="with --shards: split a model arriving faster than this across shards (0: never)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a core setting, e.g. --set resp_ns=1000000 --set drop=drop_timeout "
                            "(fields of shard.core.config.CoreConfig)")

    run = commands.add_parser("run", help="one simulation: outcome counts, goodput, batches, busy slots")
    common(run)
    run.add_argument("--scale", type=float, default=1.0, help="multiply every rate")
    run.add_argument("--checks", action="store_true", help="check invariants on every action")
    run.add_argument("--timing", action="store_true", help="add CPU time (not deterministic)")
    run.set_defaults(handler=_run)

    cap = commands.add_parser("capacity", help="largest --scale within the bad-rate limit")
    common(cap)
    cap.add_argument("--max-bad-rate", type=float, default=0.01)
    cap.set_defaults(handler=_capacity)

    mins = commands.add_parser("min-slots", help="fewest slots within the bad-rate limit")
    common(mins)
    mins.add_argument("--scale", type=float, default=1.0)
    mins.add_argument("--max-bad-rate", type=float, default=0.01)
    mins.set_defaults(handler=_min_slots)

    cmp_ = commands.add_parser("compare", help="every policy's capacity and min-slots, ratios to eager")
    common(cmp_, policy=False)
    cmp_.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policy names")
    cmp_.add_argument("--min-slots-scale", type=float, default=None,
                      help="scale for min-slots (default: where the bound needs 75%% of the slots)")
    cmp_.add_argument("--max-bad-rate", type=float, default=0.01)
    cmp_.add_argument("--jobs", type=int, default=2, help="parallel worker processes")
    cmp_.set_defaults(handler=_compare)

    auto = commands.add_parser("autoscale", help="a workload whose rates change, with the autoscaler and a "
                               "cold-starting actuator in the loop: GPU-seconds against the oracle's")
    auto.add_argument("workload", help="a workload TOML file or a built-in name (diurnal, steps, ...)")
    auto.add_argument("--policy", default=DEFAULT_POLICY, choices=list(POLICIES))
    auto.add_argument("--rule", default="demand", choices=["demand", "hpa", "fixed"],
                      help="demand: rate x cost (ours); hpa: current x busy / target; fixed: --fixed-slots throughout")
    auto.add_argument("--fixed-slots", type=int, default=0, help="with --rule fixed: the slots held")
    auto.add_argument("--cold-start-s", type=float, default=20.0, help="before an added slot serves")
    auto.add_argument("--epoch-s", type=float, default=5.0, help="the autoscaler runs once per epoch")
    auto.add_argument("--target-utilization", type=float, default=None, help="(default: the autoscaler's)")
    auto.add_argument("--scale", type=float, default=1.0, help="multiply every rate")
    auto.add_argument("--slots", type=int, default=None, help="the pool (default: the workload's)")
    auto.add_argument("--seed", type=int, default=None)
    auto.add_argument("--noise", type=float, default=0.0)
    auto.add_argument("--every", type=int, default=6, help="print every Nth epoch of the time series")
    auto.add_argument("--plot", default=None, metavar="PNG", help="draw the time series")
    auto.add_argument("--json", action="store_true")
    auto.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a core setting")
    auto.set_defaults(handler=_autoscale)

    fuzz = commands.add_parser("fuzz", help="swarm-test a seed: random workload, policy and faults under checkers")
    fuzz.add_argument("--seed", type=int, required=True)
    fuzz.add_argument("--count", type=int, default=1, help="seeds seed..seed+count-1")
    fuzz.set_defaults(handler=_fuzz)

    control = commands.add_parser("control", help="the control plane (coordinators, shard followers, agents) "
                                  "against a simulated KV with faults, under checkers")
    control.add_argument("--seed", type=int, required=True)
    control.add_argument("--count", type=int, default=1, help="seeds seed..seed+count-1")
    control.add_argument("--seconds", type=float, default=60.0, help="virtual seconds of faults per seed")
    control.add_argument("--trace", action="store_true", help="print each seed's faults and coordinator events")
    control.add_argument("--json", action="store_true", help="one JSON line per seed")
    control.set_defaults(handler=_control)


def core_config(settings: list[str]) -> CoreConfig:
    """CoreConfig from KEY=VALUE strings, validated like a config file."""
    raw: dict[str, object] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        raw[key.strip()] = _scalar(value.strip())
    try:
        return msgspec.convert(raw, CoreConfig, strict=False)
    except msgspec.ValidationError as error:
        raise ValueError(f"--set: {error}") from None


def _scalar(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _options(args: argparse.Namespace, **overrides: object) -> SimOptions:
    values = {"slots": args.slots, "seed": args.seed, "noise": args.noise, "core": core_config(args.set),
              "shards": args.shards, "epoch_s": args.epoch_s, "shard_rps_max": args.shard_rps_max}
    values.update(overrides)
    return SimOptions(**values)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    loaded = load_workload(args.workload)
    options = _options(args, scale=args.scale, checks=args.checks)
    report = run_report(loaded, args.policy, options, timing=args.timing)
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        print(format_run(report))
    return 0


def _capacity(args: argparse.Namespace) -> int:
    loaded = load_workload(args.workload)
    result = capacity(loaded, args.policy, _options(args), max_bad_rate=args.max_bad_rate, progress=_progress)
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(
            f"{result.policy} on {result.workload} ({_slots_text(result.slots, result.slot_mix)}): capacity_scale "
            f"{result.capacity_scale:.3f} = {result.fraction_of_bound:.3f} of the bound "
            f"({result.bound_scale:.3f}); goodput {result.goodput_rps:.1f} rps; worst model bad rate "
            f"{result.worst_model_bad_rate:.2%} (limit {result.max_bad_rate:.2%})"
        )
    return 0


def _min_slots(args: argparse.Namespace) -> int:
    loaded = load_workload(args.workload)
    result = min_slots(
        loaded, args.policy, _options(args, scale=args.scale), max_bad_rate=args.max_bad_rate, progress=_progress
    )
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        found = "not met" if result.min_slots is None else str(result.min_slots)
        print(
            f"{result.policy} on {result.workload} at scale {result.scale:g}: min_slots {found} "
            f"(bound {result.bound_slots}, needed_slots {result.needed_slots:.2f})"
        )
    return 0


class CompareRow(msgspec.Struct, kw_only=True):
    policy: str
    capacity: CapacityResult
    min_slots: MinSlotsResult


class Comparison(msgspec.Struct, kw_only=True):
    workload: str
    slots: int
    slot_mix: str = ""  # a mixed fleet's classes, e.g. "4x1.0 + 4x0.5"; "" when homogeneous
    bound_scale: float
    min_slots_scale: float
    rows: list[CompareRow]


def _compare_one(workload: str, policy: str, options: SimOptions, scale: float, limit: float) -> CompareRow:
    loaded = load_workload(workload)
    cap = capacity(loaded, policy, options, max_bad_rate=limit, progress=_progress)
    mins = min_slots(
        loaded, policy, msgspec.structs.replace(options, scale=scale), max_bad_rate=limit, progress=_progress
    )
    return CompareRow(policy=policy, capacity=cap, min_slots=mins)


def compare(workload: str, policies: list[str], options: SimOptions, *, min_slots_scale: float | None,
            max_bad_rate: float, jobs: int) -> Comparison:
    loaded = load_workload(workload)
    slots = options.slots or loaded.workload.slots
    bound_scale = analytic_bound(loaded, slots, options.core).bound_scale
    scale = min_slots_scale if min_slots_scale is not None else 0.75 * bound_scale
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_compare_one, workload, p, options, scale, max_bad_rate) for p in policies]
        rows = [f.result() for f in futures]
    return Comparison(workload=loaded.workload.name, slots=slots, slot_mix=slot_mix(classes_of_slots(loaded, slots)),
                      bound_scale=bound_scale, min_slots_scale=scale, rows=rows)


def _compare(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policies: {', '.join(unknown)}; choose from {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    result = compare(args.workload, policies, _options(args), min_slots_scale=args.min_slots_scale,
                     max_bad_rate=args.max_bad_rate, jobs=args.jobs)
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(format_comparison(result))
    return 0


def _autoscale(args: argparse.Namespace) -> int:
    from coordinator.autoscale import AutoscaleConfig
    from load.sim.autoscale import simulate_autoscale
    from load.sim.autoscale_report import format_series, format_summary, plot_runs

    if args.rule == "fixed" and args.fixed_slots < 1:
        print("--rule fixed needs --fixed-slots N (N >= 1)", file=sys.stderr)
        return 2
    settings = {"rule": "demand" if args.rule == "fixed" else args.rule, "cold_start_s": args.cold_start_s}
    if args.target_utilization is not None:
        settings["target_utilization"] = args.target_utilization
    config = msgspec.convert(settings, AutoscaleConfig)
    options = SimOptions(slots=args.slots, seed=args.seed, noise=args.noise, scale=args.scale,
                         core=core_config(args.set))
    result = simulate_autoscale(load_workload(args.workload), args.policy, config, epoch_s=args.epoch_s,
                                options=options, fixed_slots=args.fixed_slots if args.rule == "fixed" else 0)
    if args.plot:
        plot_runs([result], args.plot)
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(format_series(result, max(1, args.every)))
        print(format_summary(result))
    return 0


def _fuzz(args: argparse.Namespace) -> int:
    from load.sim.swarm import run_swarm_seed

    failures = 0
    for seed in range(args.seed, args.seed + args.count):
        error = run_swarm_seed(seed)
        if error:
            failures += 1
            print(f"seed {seed}: FAIL {error}\n  replay: symphony sim fuzz --seed {seed}", file=sys.stderr)
        else:
            print(f"seed {seed}: ok", file=sys.stderr)
    return 1 if failures else 0


def _control(args: argparse.Namespace) -> int:
    from load.sim.control import draw_case, run_case

    failures = mixed = 0
    for seed in range(args.seed, args.seed + args.count):
        case = draw_case(seed, duration_s=args.seconds)
        mixed += bool(case.devices)
        result = run_case(case, trace=args.trace)
        failures += not result.ok
        if args.json:
            print(msgspec.json.encode(result).decode())
        if args.trace:
            print("\n".join(result.trace), file=sys.stderr)
        if not result.ok:
            print(f"seed {seed}: FAIL\n  " + "\n  ".join(result.violations)
                  + f"\n  replay: symphony sim control --seed {seed} --trace", file=sys.stderr)
        elif args.count <= 20 or seed % 100 == 0:
            fleet = f", classes {'/'.join(case.speeds)}" if case.devices else ""
            print(f"seed {seed}: ok ({result.epochs_written} epochs, {result.model_moves} model moves{fleet})",
                  file=sys.stderr)
    print(f"{args.count - failures} of {args.count} seeds ok ({mixed} with a mixed fleet)", file=sys.stderr)
    return 1 if failures else 0


# ---- formatting ---------------------------------------------------------------------------
def format_run(report: SimReport) -> str:
    lines = [
        f"workload {report.workload}  policy {report.policy}  seed {report.seed}  slots {report.slots}  "
        f"scale {report.scale:g}",
        f"{'model':<16}{'offered':>9}{'success':>9}{'dropped':>9}{'timeout':>9}{'noreply':>9}"
        f"{'goodput/s':>11}{'bad rate':>10}{'mean batch':>12}",
    ]
    for m in [*report.models, None]:
        row = m or report.total
        name = m.name if m else "TOTAL"
        mean_batch = m.mean_batch_size if m else report.mean_batch_size
        lines.append(
            f"{name:<16}{row.offered:>9}{row.success:>9}{row.dropped:>9}{row.timeout:>9}{row.noreply:>9}"
            f"{row.goodput_rps:>11.1f}{row.bad_rate:>10.2%}{mean_batch:>12.1f}"
        )
    lines.append(
        f"busy_slots {report.busy_slots:.2f} (slot busy fraction {report.slot_busy_fraction:.1%}); "
        f"needed_slots {report.needed_slots:.2f}; bound_scale {report.bound_scale:.3f}"
    )
    idle = sum(f < 0.05 for f in report.slot_busy_fractions)
    lines.append(f"slots under 5% busy: {idle} of {report.slots}; per slot: "
                 + " ".join(f"{f:.0%}" for f in report.slot_busy_fractions))
    if report.timing:
        lines.append(
            f"cpu {report.timing['cpu_s']:.2f} s, "
            f"{report.timing['requests_per_cpu_s']:,.0f} simulated requests per CPU-second"
        )
    return "\n".join(lines)


def format_comparison(result: Comparison) -> str:
    eager = next((r for r in result.rows if r.policy == "eager"), None)
    lines = [
        f"workload {result.workload}: {_slots_text(result.slots, result.slot_mix)}, "
        f"bound_scale {result.bound_scale:.3f}; "
        f"min-slots at scale {result.min_slots_scale:.3f}",
        f"{'policy':<16}{'capacity':>10}{'of bound':>10}{'vs eager':>10}{'goodput/s':>11}"
        f"{'worst model':>13}{'min slots':>11}{'bound':>7}{'vs eager':>10}",
    ]
    for row in result.rows:
        cap, mins = row.capacity, row.min_slots
        eager_scale = eager.capacity.capacity_scale if eager else 0.0
        vs_eager = cap.capacity_scale / eager_scale if eager_scale else float("nan")
        slots = "-" if mins.min_slots is None else str(mins.min_slots)
        slots_vs = (
            f"{mins.min_slots / eager.min_slots.min_slots:.2f}"
            if eager and eager.min_slots.min_slots and mins.min_slots
            else "-"
        )
        lines.append(
            f"{row.policy:<16}{cap.capacity_scale:>10.3f}{cap.fraction_of_bound:>10.3f}{vs_eager:>10.3f}"
            f"{cap.goodput_rps:>11.1f}{cap.worst_model_bad_rate:>13.2%}{slots:>11}{mins.bound_slots:>7}{slots_vs:>10}"
        )
    return "\n".join(lines)


def _slots_text(slots: int, mix: str) -> str:
    """ "8 slots", or in a mixed fleet "8 slots 4x1.0 + 4x0.5"."""
    return f"{slots} slots {mix}" if mix else f"{slots} slots"

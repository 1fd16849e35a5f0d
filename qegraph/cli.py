"""The ``qegraph`` command line.

    qegraph convert IN [--arch pkg.mod:Class] [--arch-kwargs JSON] [--spec spec.yaml] [--layout bert]
                       [--activation relu] [--trust-pickle] [--allow-nonfinite] -o OUT.qeg
    qegraph inspect GRAPH.qeg [--plot out.png]
    qegraph zoo cnn|mlp|inr|transformer --out DIR [--num-models N] [--seed S] | info | export | import
    qegraph experiment NAME [--seeds 3] [--workers N]   (comparison grid → results.md/.csv/.png)
    qegraph fit|validate|test|predict --config configs/X.yaml [overrides]   (LightningCLI)

Errors caused by the input (a truncated file, NaN weights, a mismatching architecture, an unsupported
op, a pickle without ``--trust-pickle``) print one line and exit with code 2; no output file is left.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from qegraph.errors import QegraphError


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to a parameter graph (.qeg)",
                       description="Convert a checkpoint (.pt/.pth state_dict or .safetensors) to a parameter graph.")
    p.add_argument("input", help="checkpoint file")
    p.add_argument("-o", "--output", required=True, help="output graph file (.qeg)")
    p.add_argument("--arch", help="architecture class, 'package.module:ClassName'")
    p.add_argument("--arch-kwargs", help="JSON object of constructor arguments for --arch")
    p.add_argument("--spec", help="YAML architecture spec (a 'layers:' list of torch.nn layers)")
    p.add_argument("--layout", help="key layout of a checkpoint without a class, e.g. 'bert'")
    p.add_argument("--num-heads", type=int, help="attention heads (for --layout bert without config.json)")
    p.add_argument("--activation", default="relu",
                   help="activation of a plain Linear chain (relu, leaky_relu, tanh, sigmoid, gelu, silu, sine:W0)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading whole pickled modules (can execute code: only for files you trust)")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert even if weights contain NaN/inf")
    p.add_argument("--num-slots", type=int, help="pad edge features to this many slots")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarize (and draw) a parameter graph")
    p.add_argument("graph", help="graph file (.qeg)")
    p.add_argument("--plot", help="write a drawing of the graph to this PNG file")


def _run_convert(args: argparse.Namespace) -> None:
    from qegraph.convert.checkpoint import convert, parse_json_kwargs
    from qegraph.graph.io import save_graph
    from qegraph.graph.summary import summarize

    t0 = time.perf_counter()
    layout_opts = {"num_heads": args.num_heads} if args.layout else {}
    g = convert(
        args.input, arch=args.arch, arch_kwargs=parse_json_kwargs(args.arch_kwargs), spec=args.spec,
        layout=args.layout, activation=args.activation, trust_pickle=args.trust_pickle,
        allow_nonfinite=args.allow_nonfinite, num_slots=args.num_slots, **layout_opts,
    )
    t1 = time.perf_counter()
    save_graph(g, args.output)
    t2 = time.perf_counter()
    print(summarize(g))
    print(f"converted {args.input} → {args.output} in {t1 - t0:.3f} s (+ {t2 - t1:.3f} s to write)")


def _run_inspect(args: argparse.Namespace) -> None:
    from qegraph.graph.io import load_graph
    from qegraph.graph.summary import summarize

    g = load_graph(args.graph)
    print(f"{args.graph}:")
    print(summarize(g))
    if args.plot:
        from qegraph.graph.plot import plot_graph

        note = plot_graph(g, args.plot)
        print(f"wrote {args.plot}" + (f" (subsampled: {note})" if note else ""))


def build_parser() -> argparse.ArgumentParser:
    from qegraph.data.cli import add_zoo_parser
    from qegraph.tasks.experiment import add_experiment_parser

    parser = argparse.ArgumentParser(
        prog="qegraph", description="Parameter graphs and quasi-equivariant metanetworks.",
        epilog="Training: qegraph fit|validate|test|predict --config configs/X.yaml (LightningCLI; --help for its options).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(sub)
    _add_inspect(sub)
    add_zoo_parser(sub)
    add_experiment_parser(sub)
    return parser


def _run_zoo(args: argparse.Namespace) -> None:
    from qegraph.data.cli import run_zoo

    run_zoo(args)


_HANDLERS = {"convert": _run_convert, "inspect": _run_inspect, "zoo": _run_zoo}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from qegraph.tasks.cli import run_lightning

        try:
            run_lightning(argv)
        except QegraphError as e:
            print(f"qegraph {argv[0]}: error: {e}", file=sys.stderr)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    try:
        if args.command == "experiment":
            from qegraph.tasks.experiment import run_experiment_cli

            run_experiment_cli(args, argv)
        else:
            _HANDLERS[args.command](args)
    except QegraphError as e:
        print(f"qegraph {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

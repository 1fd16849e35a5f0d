"""The ``qegraph`` command line.

    qegraph convert IN [--arch pkg.mod:Class] [--arch-kwargs JSON] [--spec spec.yaml]
                       [--config config.json] [--layout MODEL_TYPE] [--num-heads N] [--strip-prefix PREFIX]
                       [--activation relu] [--trust-pickle] [--allow-nonfinite] -o OUT.qeg
    qegraph canonicalize IN [same flags as convert] -o OUT.qeg      (IN: a .qeg graph or a checkpoint)
    qegraph inspect GRAPH.qeg [--plot out.png]
    qegraph zoo cnn|mlp|inr|transformer --out DIR [--num-models N] [--seed S] | info | export | import
    qegraph experiment NAME [--seeds 3] [--workers N]   (comparison grid → results.md/.csv/.png)
    qegraph fit|validate|test|predict --config configs/X.yaml [overrides]   (LightningCLI)

Errors caused by the input (a truncated file, NaN weights, a mismatching architecture, an unsupported
op, a pickle without ``--trust-pickle``) print one line and exit with code 2; no output file is left.

Only ``fit``/``validate``/``test``/``predict``/``experiment`` (and ``zoo``) import Lightning and the data
stack, and only when they run: ``convert`` and ``inspect`` work even where an optional package (a
CUDA-only torchvision wheel, say) fails to import.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from qegraph.errors import QegraphError


def _add_source(p: argparse.ArgumentParser) -> None:
    """The input checkpoint and the flags that say how to read it (shared by convert and canonicalize)."""
    p.add_argument("-o", "--output", required=True, help="output graph file (.qeg)")
    p.add_argument("--arch", help="architecture class or factory function, 'package.module:Name' (e.g. "
                   "torchvision.models:resnet18; looked up in the current directory first)")
    p.add_argument("--arch-kwargs", help="JSON object of constructor arguments for --arch")
    p.add_argument("--spec", help="YAML architecture spec (a 'layers:' list of torch.nn layers)")
    p.add_argument("--config", help="the model's config.json (Hugging Face; default: config.json next to the "
                   "checkpoint). Its model_type chooses the layout")
    p.add_argument("--layout", help="Hugging Face model type of a checkpoint without config.json, or overriding "
                   "it: bert, roberta, distilbert, gpt2, vit, llama, qwen2, mistral")
    p.add_argument("--num-heads", type=int, help="attention heads (Hugging Face layouts without a config.json)")
    p.add_argument("--strip-prefix", metavar="PREFIX",
                   help="remove this prefix from every key first, e.g. 'module.' (DataParallel) or 'model.' "
                   "(Lightning)")
    p.add_argument("--activation", default="relu",
                   help="activation of a plain Linear chain (relu, leaky_relu, relu6, tanh, sigmoid, gelu, silu, "
                   "hardswish, hardsigmoid, mish, elu, sine:W0)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading whole pickled modules (can execute code: only for files you trust)")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert even if weights contain NaN/inf")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to a parameter graph (.qeg)",
                       description="Convert a checkpoint (.pt/.pth state_dict or .safetensors) to a parameter graph.")
    p.add_argument("input", help="checkpoint file")
    _add_source(p)


def _add_canonicalize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("canonicalize", help="write the canonical (balanced) form of a network (.qeg)",
                       description="Replace a network by the canonical representative of its orbit under the "
                       "continuous symmetries (same function; docs/canonical.md).")
    p.add_argument("input", help="a .qeg graph, or a checkpoint (read as by 'qegraph convert', same flags)")
    _add_source(p)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarize (and draw) a parameter graph")
    p.add_argument("graph", help="graph file (.qeg)")
    p.add_argument("--plot", help="write a drawing of the graph to this PNG file")


def _read_source(args: argparse.Namespace):  # noqa: ANN202  (a ParameterGraph; imports stay lazy)
    from qegraph.convert.checkpoint import convert, parse_json_kwargs

    return convert(
        args.input, arch=args.arch, arch_kwargs=parse_json_kwargs(args.arch_kwargs), spec=args.spec,
        layout=args.layout, config=args.config, num_heads=args.num_heads, strip_prefix=args.strip_prefix,
        activation=args.activation, trust_pickle=args.trust_pickle, allow_nonfinite=args.allow_nonfinite,
    )


def _run_convert(args: argparse.Namespace) -> None:
    from qegraph.graph.io import save_graph
    from qegraph.graph.summary import summarize

    t0 = time.perf_counter()
    g = _read_source(args)
    t1 = time.perf_counter()
    save_graph(g, args.output)
    t2 = time.perf_counter()
    print(summarize(g))
    print(f"converted {args.input} → {args.output} in {t1 - t0:.3f} s (+ {t2 - t1:.3f} s to write)")


def _run_canonicalize(args: argparse.Namespace) -> None:
    from qegraph.graph.io import load_graph, save_graph
    from qegraph.graph.summary import summarize
    from qegraph.symmetry.canonical import canonicalize, describe_canonical

    t0 = time.perf_counter()
    g = load_graph(args.input) if args.input.endswith(".qeg") else _read_source(args)
    t1 = time.perf_counter()
    c, _ = canonicalize(g)
    t2 = time.perf_counter()
    save_graph(c, args.output)
    print(summarize(c))
    print(describe_canonical(c))
    print(f"canonicalized {args.input} → {args.output} in {t2 - t1:.3f} s (+ {t1 - t0:.3f} s to read)")


def _run_inspect(args: argparse.Namespace) -> None:
    from qegraph.graph.io import load_graph
    from qegraph.graph.summary import summarize
    from qegraph.symmetry.canonical import describe_canonical

    g = load_graph(args.graph)
    print(f"{args.graph}:")
    print(summarize(g))
    print(describe_canonical(g))
    if args.plot:
        from qegraph.graph.plot import plot_graph

        note = plot_graph(g, args.plot)
        print(f"wrote {args.plot}" + (f" (subsampled: {note})" if note else ""))


#: Subcommands whose parsers import the data / training stack: built only when they run.
_LAZY = {
    "zoo": "generate model zoos, summarise them, import / export public layouts",
    "experiment": "run a comparison grid and write results tables",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``zoo`` and ``experiment`` get their full parsers only when ``command`` names
    them (their modules import Lightning), and a one-line entry otherwise."""
    parser = argparse.ArgumentParser(
        prog="qegraph", description="Parameter graphs and quasi-equivariant metanetworks.",
        epilog="Training: qegraph fit|validate|test|predict --config configs/X.yaml (LightningCLI; --help for its options).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(sub)
    _add_canonicalize(sub)
    _add_inspect(sub)
    if command == "zoo":
        from qegraph.data.cli import add_zoo_parser

        add_zoo_parser(sub)
    else:
        sub.add_parser("zoo", help=_LAZY["zoo"])
    if command == "experiment":
        from qegraph.tasks.experiment import add_experiment_parser

        add_experiment_parser(sub)
    else:
        sub.add_parser("experiment", help=_LAZY["experiment"])
    return parser


def _run_zoo(args: argparse.Namespace) -> None:
    from qegraph.data.cli import run_zoo

    run_zoo(args)


_HANDLERS = {"convert": _run_convert, "canonicalize": _run_canonicalize, "inspect": _run_inspect, "zoo": _run_zoo}
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
    args = build_parser(argv[0] if argv else None).parse_args(argv)
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

"""``qegraph zoo …``: generate zoos, summarise them, and convert to / from the public layouts.

The main CLI wires this in with ``add_zoo_parser(sub)`` and dispatches ``"zoo"`` to :func:`run_zoo`.
"""

from __future__ import annotations

import argparse
import os

from qegraph.data.generate import FAMILIES, GPU_MODELS_AT_ONCE, generate_zoo
from qegraph.data.layouts import EXPORTERS, IMPORTERS
from qegraph.data.store import Zoo
from qegraph.data.train import resolve_device
from qegraph.data.zoo_inr import INRFamily

_DEFAULT_MODELS = {"cnn": 1000, "mlp": 1000, "inr": 1000, "transformer": 200}
_HELP = {
    "cnn": "Small CNN Zoo architecture trained on digits with sampled hyperparameters",
    "mlp": "ReLU / tanh MLPs of mixed depths and widths trained on digits",
    "inr": "one SIREN fitted to each digit image (label = digit)",
    "transformer": "tiny nn.TransformerEncoder classifiers reading digit rows as tokens",
}


def add_zoo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``zoo`` command (and its subcommands) to the main parser's subparsers."""
    p = sub.add_parser("zoo", help="generate model zoos, summarise them, import / export public layouts")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    for kind, family in FAMILIES.items():
        g = zsub.add_parser(kind, help=_HELP[kind])
        g.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
        g.add_argument("--num-models", type=int, default=_DEFAULT_MODELS[kind], help="number of training runs")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--chunk-size", type=int, default=None,
                       help=f"runs trained at once and stored per shard (default {family.chunk_size})")
        g.add_argument("--workers", type=int, default=None,
                       help="CPU processes training chunks in parallel (default: 2 on a CPU, 1 on a GPU; "
                            "results do not depend on it)")
        g.add_argument("--device", default="cpu",
                       help="cpu (default), cuda, cuda:N or auto (CUDA when available); random numbers are "
                            "drawn on the CPU either way, so the zoo differs only by floating-point rounding")
        g.add_argument("--models-at-once", type=int, default=None,
                       help=f"runs trained in one vectorized call, in whole chunks (default: one chunk on a "
                            f"CPU, {GPU_MODELS_AT_ONCE} on a GPU)")
        g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        if kind == "inr":
            g.add_argument("--init", choices=INRFamily.INITS, default="shared",
                           help="start every INR from one shared SIREN initialisation (default) or from its own")
    info = zsub.add_parser("info", help="counts, architectures and metric summary of a zoo")
    info.add_argument("dir")
    exp = zsub.add_parser("export", help="write a zoo in a public layout")
    exp.add_argument("dir")
    exp.add_argument("--format", required=True, choices=sorted(EXPORTERS))
    exp.add_argument("--out", required=True)
    imp = zsub.add_parser("import", help="convert a public-layout zoo into a qegraph zoo")
    imp.add_argument("src")
    imp.add_argument("--format", required=True, choices=sorted(IMPORTERS))
    imp.add_argument("--out", required=True)
    imp.add_argument("--activation", choices=["relu", "tanh"], default=None,
                     help="cnn-zoo: activation when metrics.csv.gz has no config.activation column")
    imp.add_argument("--conv-stride", type=int, default=1, help="cnn-zoo: conv stride recorded in the architecture")
    imp.add_argument("--w0", type=float, default=30.0, help="nfn-siren: SIREN frequency ω₀")
    return p


def run_zoo(args: argparse.Namespace) -> None:
    """Run a parsed ``qegraph zoo …`` command (raises ``QegraphError`` on user errors)."""
    cmd = args.zoo_command
    if cmd in FAMILIES:
        options = {"init": args.init} if cmd == "inr" else {}
        device = resolve_device(args.device)
        workers = args.workers or (min(2, os.cpu_count() or 1) if device.type == "cpu" else 1)
        out = generate_zoo(cmd, args.out, args.num_models, seed=args.seed, chunk_size=args.chunk_size,
                           progress=not args.no_progress, workers=workers, options=options, device=device,
                           models_at_once=args.models_at_once)
        print(Zoo(out).summary())
    elif cmd == "info":
        print(Zoo(args.dir).summary())
    elif cmd == "export":
        out = EXPORTERS[args.format](args.dir, args.out)
        print(f"wrote {out} ({args.format})")
    elif cmd == "import":
        if args.format == "cnn-zoo":
            out = IMPORTERS["cnn-zoo"](args.src, args.out, conv_stride=args.conv_stride, activation=args.activation)
        else:
            out = IMPORTERS["nfn-siren"](args.src, args.out, w0=args.w0)
        print(Zoo(out).summary())

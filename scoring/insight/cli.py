"""``ctr-insight``: the offline DeepInsight study (docs/insight.md).

    ctr-insight synth  --out DIR                 a synthetic labelled world (train/test by day)
    ctr-insight train  --data DIR --model-repo R one package version per epoch, past overfitting
    ctr-insight report --model-repo R --model NAME --versions ... --data train,test --out DIR
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctr-insight", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from . import report, synth, train

    for name, module, text in (("synth", synth, "write a synthetic labelled world"),
                               ("train", train, "train on it (PyTorch), a version per epoch"),
                               ("report", report, "the study over versions and labelled logs")):
        p = sub.add_parser(name, help=text, description=(module.__doc__ or text).split("\n")[0])
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

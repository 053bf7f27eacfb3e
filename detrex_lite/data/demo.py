"""The synthetic demo dataset: ``python -m detrex_lite.data.demo [--out DIR]`` generates it.

The implementation lives in :mod:`detrex_lite.data.demo_dataset` (re-exported here); this module
is the command line, kept apart so that running it does not import it twice.
"""
import argparse
import logging

from .demo_dataset import *  # noqa: F401,F403
from .demo_dataset import (
    DEFAULT_NUM_IMAGES,
    DEFAULT_SEED,
    DEMO_VERSION,
    _atomic_generate,
    _is_complete,
    demo_dataset_dir,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None,
                        help=f"dataset folder to write (default: <cache>/{DEMO_VERSION}, the one "
                             f"the registered datasets read; <cache>/{DEMO_VERSION}-N-M for other sizes)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_IMAGES["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_IMAGES["val"])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.out is None and args.seed != DEFAULT_SEED:
        parser.error("a non-default --seed needs --out (the cache holds the default-seed datasets)")
    out = args.out if args.out is not None else demo_dataset_dir(None, args.num_train, args.num_val)
    if _is_complete(out):
        print(f"{out} already holds a complete demo dataset; delete it to regenerate.")
        return out
    _atomic_generate(out, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    print(f"Wrote the demo dataset to {out}")
    return out


if __name__ == "__main__":
    main()

#!/usr/bin/env python
r"""Times multi-scale deformable attention: the compiled operator vs the PyTorch reference, and
compares both with a floor computed from the bytes that must move.

Shapes (M heads, D channels per head, L = 4 levels, P points; M=8, D=32, P=4 unless stated):
  E1        encoder training, N=2, levels (100,167) (50,84) (25,42) (13,21), Lq = S
  E2        encoder inference, N=1, levels (100,150) (50,75) (25,38) (13,19), Lq = S
  E3        encoder, N=8, levels (128,128) (64,64) (32,32) (16,16), Lq = S
  D1, D2    decoder, E1's value, Lq = 300 / 900
  R_uniform E1 with sampling locations uniform in [0, 1] (no locality)
  R_oob10   E1 with 10% of all samples moved outside every map (they read zeros), on top of
            the ~8.7% of E1's realistic samples that already fall outside near the borders
  R_D64     E1 with D = 64
  R_P8      E1 with P = 8
  R_D48     E1 with D = 48 (not a power of two)
  tiny      N=1, levels (8,12) (4,6) (2,3) (1,2), Lq = S (smoke tests)
Realistic locations: reference points (pixel centres for the encoder, uniform points for the
decoder) + the module's initial offset pattern (head h at angle 2*pi*h/M, point k at k+1 pixels)
+ 0.5 px Gaussian noise; attention weights are a softmax over L*P.

dtypes: in a float32 or float64 row both implementations get all inputs in that dtype. In a
float16/bfloat16 row the compiled operator gets value in that dtype and sampling locations and
attention weights in float32 (what a model under AMP passes it; its dtype contract, docs/ops.md)
and accumulates in float32, on CPU and CUDA alike (`compute_dtype` float32); the reference gets
all three in the row's dtype (grid_sample needs one dtype). Each row records the dtypes its
implementation got (`input_dtypes`). `max_abs_diff_vs_reference` on a native row compares with
the reference run in the native row's compute dtype on the native's own inputs.

Floor: the time to move the bytes that any implementation must move at the peak memory
bandwidth (`--peak-bandwidth`, else a table of known GPUs, else a measured device-to-device
copy), from the dtypes of each row's inputs; `fraction_of_floor` = floor / measured (1.0 = at
the bandwidth limit). The formula is printed and stored in the JSON (`floor_formula`).

The logic lives in detrex_lite.layers.ops_benchmark (run) and ops_benchmark_inputs (shapes,
inputs, bytes); this file parses the arguments first, so --help answers before torch loads.

Examples:
  python tools/benchmark_ops.py --device cpu --threads 2 --shapes E1,D1,E2 --out benchmarks/ops_cpu.json
  python tools/benchmark_ops.py --device cuda --dtypes float32,float16,bfloat16 \
      --shapes E1,E2,E3,D1,D2,R_uniform,R_oob10,R_D64,R_P8,R_D48 --out benchmarks/ops_cuda.json
"""
import argparse

SHAPE_NAMES = "E1,E2,E3,D1,D2,R_uniform,R_oob10,R_D64,R_P8,R_D48,tiny"  # ops_benchmark_inputs.SHAPES
ALL_GPU_SHAPES = "E1,E2,E3,D1,D2,R_uniform,R_oob10,R_D64,R_P8,R_D48"
CUDA_KERNEL_NAMES = "auto,generic,scalar,index64"  # ms_deform_attn_function.CUDA_KERNELS


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32,float64,float16,bfloat16")
    parser.add_argument("--shapes", default="E1,D1", help=f"comma-separated from {SHAPE_NAMES}; 'all' = {ALL_GPU_SHAPES}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default: 5 on CPU, 100 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 CPU, 10 CUDA)")
    parser.add_argument("--peak-bandwidth", type=float, default=None, metavar="GBps",
                        help="peak memory bandwidth for the floor (default: known GPU table, else a measured copy)")
    parser.add_argument("--cuda-kernels", default="auto",
                        help=f"CUDA only, comma-separated from {CUDA_KERNEL_NAMES}: time these kernel "
                             "instances side by side (auto = what the operator picks; the others force the "
                             "generic L/P loop, 1-element packs, 64-bit indices)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


def main(argv=None) -> dict:
    parser = get_parser()
    args = parser.parse_args(argv)
    from detrex_lite.cli import import_detectron2_quietly

    import_detectron2_quietly()  # detectron2 without its torch.jit.script FutureWarning
    from detrex_lite.layers.ops_benchmark import run

    try:
        return run(**vars(args))
    except ValueError as e:  # an unknown shape, dtype or kernel name
        parser.error(str(e))


if __name__ == "__main__":
    main()

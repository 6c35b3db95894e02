"""The transformer the GPU checks train, and the settings that make two runs
bitwise comparable.

Determinism: fixed seeds, torch.use_deterministic_algorithms, a fixed cuBLAS
workspace, no TF32, and the math attention kernel (the fused ones have
non-deterministic backward passes or pick kernels by heuristics).
"""

import os

import torch
import torch.nn as nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_deterministic(seed=1234):
    # Read by cuBLAS when torch creates its handle: before the first matmul.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # Global switches (not a context manager): they also hold on the autograd
    # thread, where recomputation runs.
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_math_sdp(True)


def add_model_args(parser, layers=8, d=1024, heads=16, ff=4096, batch=4, seq=1024, dtype="fp32", dropout=0.1):
    g = parser.add_argument_group("model")
    g.add_argument("--layers", type=int, default=layers)
    g.add_argument("--d", type=int, default=d, help="model width")
    g.add_argument("--heads", type=int, default=heads)
    g.add_argument("--ff", type=int, default=ff, help="feed-forward width")
    g.add_argument("--batch", type=int, default=batch)
    g.add_argument("--seq", type=int, default=seq, help="tokens per sequence")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=dtype)
    g.add_argument("--dropout", type=float, default=dropout)
    g.add_argument("--seed", type=int, default=1234)


def model_args_list(args):
    """The model flags of args, to pass the same model to a child process."""
    return ["--layers", str(args.layers), "--d", str(args.d), "--heads", str(args.heads), "--ff", str(args.ff),
            "--batch", str(args.batch), "--seq", str(args.seq), "--dtype", args.dtype,
            "--dropout", str(args.dropout), "--seed", str(args.seed)]


def build(args, device):
    """A stack of encoder layers and one input batch (same values on every run)."""
    torch.manual_seed(args.seed)
    layers = nn.ModuleList(
        nn.TransformerEncoderLayer(args.d, args.heads, args.ff, args.dropout, batch_first=True, norm_first=True)
        for _ in range(args.layers))
    layers.to(device=device, dtype=DTYPES[args.dtype])
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, args.seq, args.d, generator=gen).to(device=device, dtype=DTYPES[args.dtype])
    return layers, x


def layer_input_bytes(args):
    return args.batch * args.seq * args.d * DTYPES[args.dtype].itemsize


def loss_of(out):
    return out.float().pow(2).mean()

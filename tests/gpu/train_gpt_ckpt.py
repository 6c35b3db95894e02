"""An ordinary GPT-style training script, as a user would write it: token and
position embeddings, a stack of causal encoder layers, each run through
torch.utils.checkpoint (unless --no-checkpoint), AdamW. It never imports ckpt:
scripts/ckpt-run makes its checkpoint calls (CKPT_PATCH=torch) or its layers
(CKPT_REGIONS=TransformerEncoderLayer) libckpt regions from the outside.

Besides the loss it measures (for the checks) peak device memory from
cuMemGetInfo, sampled by a thread, reads libckpt's counters through ctypes
when libckpt is preloaded (tests/gpu/ckpt_capi, not the ckpt package), and
writes all of it to --json.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_capi  # noqa: E402  (measurement only: reads libckpt's counters when it is preloaded)
import devmem  # noqa: E402


class GPT(nn.Module):
    def __init__(self, vocab, seq, d, heads, ff, layers, dropout, use_checkpoint):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, ff, dropout, batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.use_checkpoint = use_checkpoint
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens):
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            if self.use_checkpoint:
                x = checkpoint(block, x, self.mask, None, True, use_reentrant=False)
            else:
                x = block(x, self.mask, None, True)
        return self.head(self.norm(x))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ff", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-checkpoint", action="store_true", help="plain layers, no torch.utils.checkpoint")
    p.add_argument("--no-deterministic", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write losses and peak memory here")
    args = p.parse_args()

    cuda = args.device == "cuda"
    if not args.no_deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.enable_flash_sdp(False)  # fused attention backward is not bitwise repeatable
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(False)
    torch.manual_seed(args.seed)
    model = GPT(args.vocab, args.seq, args.d, args.heads, args.ff, args.layers, args.dropout,
                not args.no_checkpoint).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed + 1)
    data = torch.randint(0, args.vocab, (args.steps, args.batch, args.seq + 1), generator=gen).to(args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        sync()
        torch.cuda.empty_cache()
    sampler = devmem.PeakSampler().start()
    losses, step_ms = [], []
    for step in range(args.steps):
        sync()
        t0 = time.perf_counter()
        tokens, targets = data[step, :, :-1], data[step, :, 1:]
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1))
        sampler.mark()
        loss.backward()
        sampler.mark()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        step_ms.append((time.perf_counter() - t0) * 1000)
        losses.append(loss.item())
        print(f"step {step + 1}: loss {losses[-1]:.6f} ({losses[-1].hex()}) {step_ms[-1]:.1f} ms", flush=True)
        del logits, loss
    sampler.stop()
    print(f"peak device memory beyond the start: {sampler.extra / devmem.GiB:.3f} GiB")
    lib = ckpt_capi.load()
    stats = lib.stats() if lib is not None else None
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"losses": losses, "losses_hex": [v.hex() for v in losses], "step_ms": step_ms,
                       "step_ms_median": statistics.median(step_ms), "memory": sampler.as_dict(),
                       "checkpoint": not args.no_checkpoint, "libckpt_stats": stats,
                       "layer_input_bytes": args.batch * args.seq * args.d * 4}, f, indent=1)


if __name__ == "__main__":
    main()

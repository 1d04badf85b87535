"""Encoder speed: build a batch of 16 real profile graphs (texts already embedded) and encode it, forward and
forward+backward, for each conv type.

    python bench/encoder_speed.py [--batch 16] [--hidden 256] [--layers 2] [--out-dim 768] [--threads 1] [--device cpu]

Prints a markdown table (median over --repeats runs after --warmup runs); docs/encoder.md quotes it.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from kgface.cache import Cache, default_cache_dir  # noqa: E402
from kgface.config import compose  # noqa: E402
from kgface.encoders import CONVS, KGEncoder, ProfileGraphBuilder  # noqa: E402
from kgface.kg import ProfileBuilder, VisibleCatalog, healthy_profile, load_kg  # noqa: E402
from kgface.resources import kg_data_dir  # noqa: E402


def timed(fn, warmup: int, repeats: int, sync) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out-dim", type=int, default=768)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cache-dir", default=None, help="default: KGFACE_CACHE_DIR or ~/.cache/kgface; 'tmp' = fresh")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    cache_dir = (tempfile.mkdtemp() if args.cache_dir == "tmp"
                 else args.cache_dir or default_cache_dir())
    cache = Cache(cache_dir)
    kg = load_kg("hpo", kg_data_dir=kg_data_dir(), cache=cache)
    pb = ProfileBuilder(kg, VisibleCatalog.load(kg_data_dir()))
    panel = [str(e.id) for e in compose("profiles").kg.panel if str(e.id) != "healthy"]
    profiles = [pb.build(q) for q in panel] + [healthy_profile(kg.source)]
    profiles = (profiles * (args.batch // len(profiles) + 1))[:args.batch]

    builder = ProfileGraphBuilder(cache=cache)
    start = time.perf_counter()
    builder.warm(profiles)
    warm_s = time.perf_counter() - start
    build_ms = timed(lambda: builder.batch(profiles), args.warmup, args.repeats, lambda: None)
    graph = builder.batch(profiles).to(device)
    stage = torch.rand(args.batch, device=device) * 3

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), "
          f"torch threads {torch.get_num_threads()}, batch {args.batch} ({graph.num_nodes} nodes, "
          f"{graph.edge_index.shape[1]} edges), hidden {args.hidden}, layers {args.layers}, out_dim {args.out_dim}")
    print(f"embedding {len(builder.features.rows)} node texts (model load + MiniLM, or the disk cache): {warm_s:.2f} s")
    print(f"building the batch of {args.batch} graphs (texts embedded): {build_ms:.1f} ms\n")
    print("| conv | parameters | forward (ms) | forward + backward (ms) | build + forward + backward (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for conv in CONVS:
        torch.manual_seed(0)
        enc = KGEncoder(conv=conv, out_dim=args.out_dim, hidden=args.hidden, layers=args.layers).to(device)
        n_params = sum(p.numel() for p in enc.parameters())

        def forward():
            with torch.no_grad():
                enc(graph, stage)

        def train_step():
            enc.zero_grad(set_to_none=True)
            enc(graph, stage).pow(2).mean().backward()

        def full_step():
            g = builder.batch(profiles).to(device)
            enc.zero_grad(set_to_none=True)
            enc(g, stage).pow(2).mean().backward()

        fwd = timed(forward, args.warmup, args.repeats, sync)
        step = timed(train_step, args.warmup, args.repeats, sync)
        full = timed(full_step, args.warmup, args.repeats, sync)
        print(f"| {conv} | {n_params / 1e6:.2f} M | {fwd:.1f} | {step:.1f} | {full:.1f} |")


if __name__ == "__main__":
    main()

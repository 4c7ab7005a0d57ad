"""ViT circuits: puretools vs a per-neuron autograd loop, every MLP neuron of one timm ViT block, one run.

A timm ``vit_tiny_patch16_224`` (seeded random weights, no download; built with
``timm.create_model(..., pretrained=False, img_size=SIZE)`` so that smaller images work: at
112 px it has 7 x 7 = 49 patch tokens + CLS = 50 tokens) on seeded random images. The layer is
the GELU of one block's MLP (``blocks.L.mlp.act``, ``[B, 50, 768]``: 768 neurons, tokens as
positions), the lower layer is the residual stream below that block (``blocks.{L-1}``,
``[B, 50, 192]``). References: the top ``--n-ref`` images of each neuron by its max over all
tokens (``collect_references``, collected once and shared). On the same references this times

(a) the per-neuron loop, the way one writes it with plain autograd (and the way the PURE code
    does it for CNNs with zennit-crp's ``CondAttribution``, whose ``ChannelConcept`` would mask
    tokens instead of features on a ``[B, T, C]`` layer, so it is not used here): one neuron k
    at a time, its references in batches of ``--ref-batch-size`` (PURE: 40), a forward pass of
    the whole model with hooks on both layers, ``torch.autograd.grad`` from the layer with the
    incoming gradient ``relu(a[..., k])`` on every token (zero on the other features) to the
    lower layer, relevance = gradient x activation summed over tokens and L1-normalised. Only a
    sample of neurons (``--neurons-sample``) is run; the whole-block time is extrapolated
    (time per neuron x 768) and the output says so;

(b) ``puretools.circuit_attributions`` on ALL neurons of the block's MLP,

and prints per-neuron and whole-block times, the ratio loop / ours (wall clock and process CPU
time), the max abs difference on the sampled neurons, peak memory and the machine.

The default block is the last one (``--block 11``): the loop's forward pass then goes past
the layer only through the final norm and the head, so its whole-model forward costs it almost
nothing that puretools skips. For an earlier block the loop also runs the later blocks, which
a hand-written loop could stop early; the ratio there is larger and less fair.

Examples
--------
CPU, what RESULTS.md reports::

    python benchmarks/bench_vit_circuits.py --threads 1

Smoke test (seconds)::

    python benchmarks/bench_vit_circuits.py --quick --threads 1
"""

from __future__ import annotations

import argparse
import sys
import warnings

import common
import timm
import torch
from common import DIFF_LABEL, RATIO_LABEL, Measure, random_images

import puretools as pt
from puretools.circuits import normalize_circuits

MODEL = "vit_tiny_patch16_224"


def loop_circuits(model, dataset, layer: str, lower: str, references, neurons, batch_size: int) -> torch.Tensor:
    """The per-neuron loop: plain autograd, one neuron at a time, ``batch_size`` references a batch.

    Returns [len(neurons), n_ref, C_lower] (float32, CPU).
    """
    store = {}
    hooks = [model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: store.__setitem__(name, o))
             for name in (layer, lower)]
    images = dataset.tensors[0]
    out = []
    try:
        for k in neurons:
            k = int(k)
            per_neuron = []
            for idx in references.indices[k].split(batch_size):
                with torch.enable_grad():
                    model(images[idx])
                    act, low = store[layer], store[lower]
                    start = torch.zeros_like(act)
                    start[..., k] = act[..., k].detach().clamp(min=0)
                    (grad,) = torch.autograd.grad(act, low, start)
                rel = (grad * low.detach()).sum(1)  # [B, T, C] -> [B, C]: summed over tokens
                per_neuron.append(normalize_circuits(rel).float())
                store.clear()
            out.append(torch.cat(per_neuron))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--size", type=int, default=112, help="image size (default 112: 50 tokens)")
    p.add_argument("--n-images", type=int, default=1000, help="random images in the data set (default 1000)")
    p.add_argument("--block", type=int, default=11, help="the block whose MLP neurons are attributed (default 11, the last)")
    p.add_argument("--n-ref", type=int, default=100, help="references per neuron (default 100)")
    p.add_argument("--neurons-sample", type=int, default=32,
                   help="neurons run through the per-neuron loop; its whole-block time is extrapolated (default 32)")
    p.add_argument("--ref-batch-size", type=int, default=40, help="batch size of the per-neuron loop (PURE: 40)")
    p.add_argument("--batch-size", type=int, default=None, help="puretools batch_size (default: the library's)")
    p.add_argument("--image-chunk", type=int, default=None, help="puretools image_chunk (default: the library's)")
    p.add_argument("--seed", type=int, default=0)
    common.add_threads(p, help="torch.set_num_threads (default: torch's choice)")
    common.add_json(p, help="also write the results to this JSON file")
    common.add_quick(p, help="tiny smoke run (depth-2 model at 32 px, 64 images, 8 references, 2 sampled neurons)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.n_images = 32, 64
        args.n_ref, args.neurons_sample = min(args.n_ref, 8), min(args.neurons_sample, 2)
    return args


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu")
    info = common.start(f"== ViT circuits benchmark: {MODEL}, gradient, cpu ==", device, args.threads)
    torch.manual_seed(args.seed)
    kwargs = {"depth": 2} if args.quick else {}
    model = timm.create_model(MODEL, pretrained=False, img_size=args.size, **kwargs).eval()
    block = min(args.block, len(model.blocks) - 1)
    if block < 1:
        raise SystemExit("--block must be >= 1 (the lower layer is the block below it)")
    layer, lower = f"blocks.{block}.mlp.act", f"blocks.{block - 1}"
    dataset = random_images(args.n_images, args.size, args.seed + 1)
    n_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    print(f"data: {args.n_images} random images 3x{args.size}x{args.size} (seed {args.seed + 1}); "
          f"timm {MODEL}{' (depth 2)' if args.quick else ''} with random weights (seed {args.seed}), "
          f"img_size={args.size}: {n_tokens} tokens; layer {layer!r} <- lower layer {lower!r} (residual stream)")

    with Measure(device) as m_refs:
        refs = pt.collect_references(model, dataset, layer, n_ref=args.n_ref, progress=False)
    n_channels, n_ref = refs.n_channels, refs.indices.shape[1]
    print(f"references: {n_channels} neurons x {n_ref}, token max (collected once, shared; {m_refs.wall:.1f} s), "
          f"{len(refs.indices.unique())} distinct reference images; layout {pt.layer_layout(model, layer, dataset.tensors[0][:2])}")

    g = torch.Generator().manual_seed(args.seed)
    sample = sorted(torch.randperm(n_channels, generator=g)[: max(1, min(args.neurons_sample, n_channels))].tolist())

    def ours_fn(neurons=None):
        return pt.circuit_attributions(model, dataset, layer, lower, refs, neurons=neurons, batch_size=args.batch_size,
                                       image_chunk=args.image_chunk, progress=False)

    with warnings.catch_warnings():  # warm-up (untimed): oneDNN primitive caches, lazy imports
        warnings.simplefilter("ignore")
        loop_circuits(model, dataset, layer, lower, refs, sample[:1], args.ref_batch_size)
        ours_fn(sample[:1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # dead neurons of random models
        with Measure(device) as m_loop:
            loop = loop_circuits(model, dataset, layer, lower, refs, sample, args.ref_batch_size)
        with Measure(device) as m_ours:
            ours = ours_fn()

    diff = (ours[sample].double() - loop.double()).abs().max().item()
    loop_per_neuron = m_loop.wall / len(sample)
    loop_layer = loop_per_neuron * n_channels
    loop_cpu_layer = m_loop.cpu / len(sample) * n_channels
    ratio = loop_layer / m_ours.wall
    cpu_ratio = loop_cpu_layer / max(m_ours.cpu, 1e-9)

    print()
    header = (f"{'':34s} {'neurons':>7s} {'pairs':>8s} {'wall s':>8s} {'per neuron s':>13s} {'whole block s':>14s} "
              f"{'CPU s (block)':>14s} {'others busy':>11s}  peak memory ({m_ours.kind})")
    print(header)
    print("-" * len(header))
    print(f"{'per-neuron loop (autograd)':34s} {len(sample):7d} {len(sample) * n_ref:8d} {m_loop.wall:8.2f} "
          f"{loop_per_neuron:13.4f} {loop_layer:11.1f} ex {loop_cpu_layer:14.1f} {m_loop.busy():>11s}  {m_loop.mem()}")
    print(f"{'puretools.circuit_attributions':34s} {n_channels:7d} {n_channels * n_ref:8d} {m_ours.wall:8.2f} "
          f"{m_ours.wall / n_channels:13.4f} {m_ours.wall:14.1f} {m_ours.cpu:14.1f} {m_ours.busy():>11s}  {m_ours.mem()}")
    print(f"(ex = extrapolated from the {len(sample)} sampled neurons {sample}: time per neuron x {n_channels}; "
          "others busy = share of the machine's cores used by other processes meanwhile)")
    print(f"per-neuron loop: batches of {args.ref_batch_size} references, whole-model forward, autograd.grad to "
          f"{lower!r}; puretools batch_size={args.batch_size or 'default'} image_chunk={args.image_chunk or 'default'}")
    print()
    print(f"{RATIO_LABEL} (reference = the per-neuron loop; whole block, wall clock, loop extrapolated): {ratio:.2f}x")
    print(f"{RATIO_LABEL} (reference = the per-neuron loop; whole block, process CPU time, loop extrapolated): {cpu_ratio:.2f}x")
    print(f"{DIFF_LABEL} ({len(sample)} sampled neurons x {n_ref} references, both float32): {diff:.3e}")
    result = {
        "model": MODEL, "size": args.size, "tokens": n_tokens, "n_images": args.n_images, "layer": layer,
        "lower_layer": lower, "neurons": n_channels, "n_ref": n_ref, "sampled_neurons": sample,
        "references_s": m_refs.wall, "loop_wall_s": m_loop.wall, "loop_cpu_s": m_loop.cpu,
        "loop_per_neuron_s": loop_per_neuron, "loop_block_extrapolated_s": loop_layer,
        "loop_peak_bytes": m_loop.peak_bytes, "ours_wall_s": m_ours.wall, "ours_cpu_s": m_ours.cpu,
        "ours_peak_bytes": m_ours.peak_bytes, "loop_others_busy": m_loop.others, "ours_others_busy": m_ours.others,
        "ratio_wall": ratio, "ratio_cpu": cpu_ratio, "max_abs_diff": diff, "ref_batch_size": args.ref_batch_size,
        "batch_size": args.batch_size, "image_chunk": args.image_chunk, "machine": info,
        "argv": sys.argv[1:],
    }
    return common.finish(result, args.json)


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reference collection throughput: puretools.collect_references vs a plain forward pass.

Two measurements, each side by side in one run:

1. In memory: ``collect_references`` (forward to the layer, spatial max, running top-n_ref)
   against a plain forward pass of the same model over the same in-memory images with the same
   DataLoader settings. Prints images/s of both and the ratio (target >= 0.9). The runs
   alternate (forward, collect, forward, collect, ...) and the fastest of each counts, so a
   change in machine load hits both alike. An untimed check recomputes the top-n_ref values
   of some channels from scratch (``MAX_ABS_DIFF`` line).

2. From JPEG files: ``--make-jpegs N --jpeg-dir DIR`` writes N random 256x256 JPEGs into
   DIR/<class>/ (kept for later runs); then ``puretools.data.image_folder(DIR, size=224)`` is
   read through ``collect_references(..., num_workers=W)`` for each W in ``--workers``,
   reporting images/s including JPEG decoding, next to the decode-only throughput of the
   same DataLoader (no model) and the in-memory forward throughput.

3. Cache cost: ``--cache`` times, interleaved in one process, a plain forward pass,
   ``collect_references`` without a cache, with a cache that misses (a fresh folder: the data
   set is fingerprinted, every image hashed as it streams by when the data set is neither
   tensors nor files, and the result written) and with a cache that hits (the entry is read,
   verified, and a streamed data set read once more to check its images). For a
   ``TensorDataset`` it also times the same items behind a plain ``Dataset`` wrapper, which
   takes the streaming path. Prints images/s and the extra time of the cached miss over the
   uncached call as a share of the plain forward's time (target <= 5 %).

Examples
--------
CPU::

    python benchmarks/bench_references.py --model resnet18 --size 112 --n-images 1000
    python benchmarks/bench_references.py --model resnet18 --size 224 --n-images 512 \\
        --make-jpegs 1000 --jpeg-dir /tmp/pt-jpegs --workers 0,1,2

H100 + 16 cores::

    python benchmarks/bench_references.py --model resnet50 --size 224 --device cuda \\
        --n-images 5000 --batch-size 256 --make-jpegs 20000 --jpeg-dir /tmp/pt-jpegs --workers 8,12,16

Cache cost on the toy world and on ResNet-18, one thread::

    python benchmarks/bench_references.py --model toy --cache --threads 1 --no-verify
    python benchmarks/bench_references.py --model resnet18 --size 112 --n-images 1000 --cache --threads 1 --no-verify

Smoke test (seconds)::

    python benchmarks/bench_references.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from common import DIFF_LABEL, Measure, Skip, load_setup
from torch.utils.data import DataLoader, Dataset

import puretools as pt
from puretools.data import image_folder
from puretools.forward import collate_images, layer_output

JPEG_SIZE = 256


# --------------------------------------------------------------------------- JPEG files


def _write_jpegs(job: tuple[str, int, int, int]) -> int:
    """Write images ``start..stop-1`` of the fake folder (one process of the pool)."""
    import numpy as np
    from PIL import Image

    root, start, stop, n_classes = job
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        # smooth random colour field plus pixel noise: compresses like a photo (~20-40 kB),
        # unlike pure noise (~150 kB), so decoding costs about what it costs on ImageNet
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        pixels = np.asarray(coarse.resize((JPEG_SIZE, JPEG_SIZE), Image.BICUBIC), dtype=np.float32)
        pixels += rng.normal(0, 12, pixels.shape)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        path = Path(root) / f"class_{i % n_classes:02d}" / f"img_{i:06d}.jpg"
        image.save(path, quality=90)
    return stop - start


def make_jpegs(root: Path, n: int, n_classes: int = 10, processes: int | None = None) -> float:
    """Write ``n`` random 256x256 JPEGs under ``root/class_XX/`` (those present are kept); seconds."""
    from multiprocessing import get_context

    existing = len(list(root.glob("class_*/img_*.jpg"))) if root.is_dir() else 0
    if existing >= n:
        return 0.0
    for c in range(n_classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    step = 250
    jobs = [(str(root), s, min(s + step, n), n_classes) for s in range(0, n, step)]
    processes = processes or os.cpu_count() or 1
    if processes > 1 and len(jobs) > 1:
        with get_context("fork").Pool(processes) as pool:
            sum(pool.imap_unordered(_write_jpegs, jobs))
    else:
        for job in jobs:
            _write_jpegs(job)
    return time.perf_counter() - t


def folder_stats(root: Path) -> tuple[int, float]:
    files = list(root.glob("class_*/img_*.jpg"))
    size = sum(f.stat().st_size for f in files[:200]) / max(1, min(200, len(files)))
    return len(files), size


# --------------------------------------------------------------------------- the timed loops


def plain_forward(model, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> int:
    """A plain forward pass of the whole model over ``dataset``, loaded like collect_references."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=device.type == "cuda")
    n = 0
    with torch.inference_mode():
        for images in loader:
            model(images.to(device, non_blocking=True))
            n += len(images)
    return n


def decode_only(dataset: Dataset, batch_size: int, num_workers: int, pin: bool) -> int:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=pin)
    return sum(len(images) for images in loader)


class Streamed(Dataset):
    """The items of ``base`` behind a plain Dataset: nothing to fingerprint up front, so the cache
    hashes every image as collect_references streams it (the path of generated data sets)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i]


def cache_cost(model, dataset: Dataset, layer: str, n_ref: int, batch_size: int, device: torch.device,
               repeats: int, ctx) -> dict:
    """Plain forward vs collect_references without cache, with a missing and with a hitting cache.

    The four runs rotate within each repeat (a change in machine load hits all alike); the
    fastest of each counts. Returns images/s of each and the cache's extra time as a share of
    the plain forward's time.
    """
    times: dict[str, list[float]] = {"forward": [], "off": [], "miss": [], "hit": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    kw = dict(n_ref=n_ref, batch_size=batch_size, device=device, progress=False)
    with tempfile.TemporaryDirectory(prefix="pt-bench-cache-") as root:
        for r in range(repeats):
            folder = Path(root) / f"run{r}"
            runs = {
                "forward": lambda: plain_forward(model, dataset, batch_size, device),
                "off": lambda: pt.collect_references(model, dataset, layer, **kw),
                "miss": lambda: pt.collect_references(model, dataset, layer, cache_dir=folder, **kw),
                "hit": lambda: pt.collect_references(model, dataset, layer, cache_dir=folder, **kw),
            }
            names = ["forward", "off", "miss", "hit"]
            start = r % 3  # rotate forward/off/miss; the hit must follow its miss
            order = (names[:3][start:] + names[:3][:start])
            order.insert(order.index("miss") + 1, "hit")
            for name in order:
                with Measure(device) as m, ctx():
                    runs[name]()
                times[name].append(m.wall)
                cpu[name].append(m.cpu)
    n = len(dataset)
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    rates = {k: n / v for k, v in best.items()}
    return {"images": n, "best_wall_s": best, "img_s": rates, "all_wall_s": times, "best_cpu_s": best_cpu,
            "all_cpu_s": cpu,
            "miss_extra_share_of_forward": (best["miss"] - best["off"]) / best["forward"],
            "miss_extra_share_of_forward_cpu": (best_cpu["miss"] - best_cpu["off"]) / best_cpu["forward"],
            "off_extra_share_of_forward_cpu": (best_cpu["off"] - best_cpu["forward"]) / best_cpu["forward"],
            "hit_share_of_forward": best["hit"] / best["forward"]}


def print_cache_cost(label: str, c: dict) -> None:
    r = c["img_s"]
    print(f"{label}: {c['images']} images; images/s (fastest of {len(c['all_wall_s']['forward'])} interleaved runs): "
          f"plain forward {r['forward']:.1f}, collect cache off {r['off']:.1f}, cache on (miss) {r['miss']:.1f}, "
          f"cache on (hit) {r['hit']:.1f}")
    print(f"  collect/forward: cache off {r['off'] / r['forward']:.3f}, cache on (miss) {r['miss'] / r['forward']:.3f}")
    print(f"  CACHE COST (miss - off) / plain forward time: {100 * c['miss_extra_share_of_forward']:+.1f} %; "
          f"a hit takes {100 * c['hit_share_of_forward']:.1f} % of a plain forward")
    b = c["best_cpu_s"]
    print(f"  process CPU s (1 thread: insensitive to other processes), fastest: plain forward {b['forward']:.3f}, "
          f"cache off {b['off']:.3f}, miss {b['miss']:.3f}, hit {b['hit']:.3f}")
    print(f"  CACHE COST by CPU time (miss - off) / plain forward: {100 * c['miss_extra_share_of_forward_cpu']:+.1f} %; "
          f"collect without cache vs plain forward: {100 * c['off_extra_share_of_forward_cpu']:+.1f} %")
    print(f"  all runs, wall s: { {k: [round(v, 3) for v in vs] for k, vs in c['all_wall_s'].items()} }")


def verify(model, dataset: Dataset, layer: str, refs, device: torch.device, batch_size: int,
           channels: int = 16) -> tuple[float, float]:
    """Recompute every image's spatial max for some channels; compare with the collected top-n.

    Returns the max abs difference of the top-n values, and the fraction of collected indices
    whose recomputed activation equals the collected value (ties may reorder indices).
    """
    chans = torch.linspace(0, refs.n_channels - 1, min(channels, refs.n_channels)).long()
    maxes = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images)
    with torch.inference_mode():
        for images in loader:
            out = layer_output(model, images.to(device), layer)
            maxes.append(out.flatten(2).amax(-1)[:, chans.to(device)].float().cpu())
    maxes = torch.cat(maxes).T  # [channels, N]
    top = maxes.topk(refs.n_ref, dim=1).values
    value_diff = (top - refs.values[chans]).abs().max().item()
    at_indices = maxes.gather(1, refs.indices[chans])
    return value_diff, (at_indices - refs.values[chans]).abs().max().item()


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--model", default="resnet18", choices=["toy", "resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--size", type=int, default=224, help="image size (default 224; ignored for toy in memory)")
    p.add_argument("--n-images", type=int, default=1000, help="in-memory random images (default 1000)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch for both loops (default 64)")
    p.add_argument("--n-ref", type=int, default=100)
    p.add_argument("--precision", default="float32", choices=["float32", "tf32", "bfloat16"],
                   help="applied alike to both loops (bfloat16: autocast)")
    p.add_argument("--channels-last", action="store_true", help="convert the model to channels_last (both loops)")
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each loop; the fastest counts")
    p.add_argument("--no-verify", action="store_true", help="skip the untimed recomputation check")
    p.add_argument("--make-jpegs", type=int, default=0, metavar="N",
                   help="write N random 256x256 JPEGs into --jpeg-dir first (default for the real run: 20000)")
    p.add_argument("--jpeg-dir", default=None, help="ImageNet-style folder of JPEGs to read (written by --make-jpegs)")
    p.add_argument("--jpeg-images", type=int, default=None,
                   help="read only the first this many files of the folder (default: all)")
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts for the JPEG run")
    p.add_argument("--skip-memory", action="store_true", help="only the JPEG measurement")
    p.add_argument("--cache", action="store_true", help="also time collect_references with the cache off, missing, hitting")
    p.add_argument("--cache-repeats", type=int, default=5, help="interleaved runs of each for --cache (default 5)")
    common.add_threads(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy-weights", default="default", help="toy checkpoint (default: the shipped one)")
    common.add_json(p)
    common.add_quick(p, help="tiny smoke run (64 px, 128 images, 64 JPEGs in a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.size = 64
        args.n_images = min(args.n_images, 128)
        args.batch_size = min(args.batch_size, 32)
        args.n_ref = min(args.n_ref, 10)
        args.repeats = 1
        if not args.make_jpegs and args.jpeg_dir is None:
            args.make_jpegs = 64
        args.workers = "0,1"
    return args


def precision_context(precision: str, device: torch.device):
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run(args: argparse.Namespace) -> dict | None:
    device = pt.checks.resolve_device(args.device)
    if device.type == "cuda":
        on = args.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    info = common.start(f"== reference collection benchmark: {args.model} @ {args.size} px, {args.precision}, "
                        f"{device} ==", device, args.threads)
    try:
        model, dataset, layer, _, data_desc = load_setup(args.model, args.size, args.n_images, args.seed, device,
                                                         max_images=args.n_images if args.quick else None,
                                                         toy_weights=args.toy_weights)
    except Skip as err:
        print(f"SKIPPED {args.model}: {err}. Build the toy world first (python -m puretools toy train).")
        return None
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    result: dict = {"model": args.model, "size": args.size, "device": str(device), "precision": args.precision,
                    "batch_size": args.batch_size, "machine": info, "argv": sys.argv[1:]}
    ctx = lambda: precision_context(args.precision, device)  # noqa: E731
    n_ref = min(args.n_ref, len(dataset))
    fwd_rate = None

    if not args.skip_memory:
        print(f"\n-- in memory: {data_desc}; layer {layer!r}, n_ref {n_ref}, batch {args.batch_size}")
        with ctx():  # warm-up (untimed)
            plain_forward(model, torch.utils.data.Subset(dataset, range(min(len(dataset), 2 * args.batch_size))),
                          args.batch_size, device)
        fwd, col, refs = [], [], None
        for _ in range(max(1, args.repeats)):
            with Measure(device) as m, ctx():
                n = plain_forward(model, dataset, args.batch_size, device)
            fwd.append(m)
            with Measure(device) as m, ctx():
                refs = pt.collect_references(model, dataset, layer, n_ref=n_ref, batch_size=args.batch_size,
                                             device=device, progress=False)
            col.append(m)
        m_fwd, m_col = min(fwd, key=lambda m: m.wall), min(col, key=lambda m: m.wall)
        fwd_rate, col_rate = n / m_fwd.wall, n / m_col.wall
        ratio = col_rate / fwd_rate
        print(f"{'':36s} {'images':>7s} {'wall s':>8s} {'images/s':>9s} {'CPU s':>7s} {'others busy':>11s}  "
              f"peak memory ({m_fwd.kind})")
        print(f"{'plain forward (whole model)':36s} {n:7d} {m_fwd.wall:8.2f} {fwd_rate:9.1f} {m_fwd.cpu:7.2f} "
              f"{m_fwd.busy():>11s}  {m_fwd.mem()}")
        print(f"{'puretools.collect_references':36s} {n:7d} {m_col.wall:8.2f} {col_rate:9.1f} {m_col.cpu:7.2f} "
              f"{m_col.busy():>11s}  {m_col.mem()}")
        print(f"(fastest of {len(fwd)} alternating runs each; all runs, wall s: forward "
              f"{[round(m.wall, 2) for m in fwd]}, collect {[round(m.wall, 2) for m in col]})")
        print(f"RATIO collect/forward (throughput, in memory): {ratio:.3f}")
        result.update(memory_images=n, forward_wall_s=m_fwd.wall, collect_wall_s=m_col.wall,
                      forward_img_s=fwd_rate, collect_img_s=col_rate, ratio_collect_forward=ratio,
                      forward_peak_bytes=m_fwd.peak_bytes, collect_peak_bytes=m_col.peak_bytes)
        if not args.no_verify:
            with ctx():
                top_diff, at_diff = verify(model, dataset, layer, refs, device, args.batch_size)
            print(f"{DIFF_LABEL} (top-{n_ref} values of 16 channels recomputed from scratch vs collected): "
                  f"{top_diff:.3e} (activations at the collected indices: {at_diff:.3e})")
            result.update(max_abs_diff=top_diff, max_abs_diff_at_indices=at_diff)

    if args.cache:
        print(f"\n-- cache cost: {data_desc}; layer {layer!r}, n_ref {n_ref}, batch {args.batch_size}")
        sets = [("as loaded (" + type(dataset).__name__ + ")", dataset)]
        if isinstance(dataset, torch.utils.data.TensorDataset):
            sets.append(("streamed (the same items behind a plain Dataset)", Streamed(dataset)))
        result["cache"] = {}
        for label, data in sets:
            c = cache_cost(model, data, layer, n_ref, args.batch_size, device, args.cache_repeats, ctx)
            print_cache_cost(label, c)
            result["cache"][label] = c

    if args.make_jpegs or args.jpeg_dir:
        tmp = None
        if args.jpeg_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="pt-bench-jpegs-")
            args.jpeg_dir = tmp.name
        root = Path(args.jpeg_dir)
        if args.make_jpegs:
            secs = make_jpegs(root, args.make_jpegs)
            if secs:
                print(f"\nwrote {args.make_jpegs} random {JPEG_SIZE}x{JPEG_SIZE} JPEGs into {root} in {secs:.1f} s")
        n_files, mean_size = folder_stats(root)
        if n_files == 0:
            print(f"No JPEGs under {root}; use --make-jpegs N.")
            return result
        jpeg_size = args.size if args.model != "toy" else 32
        folder = image_folder(root, size=jpeg_size)
        if args.jpeg_images and args.jpeg_images < len(folder):
            folder = torch.utils.data.Subset(folder, range(args.jpeg_images))
        n_jpeg = len(folder)
        print(f"\n-- from JPEG: {n_jpeg} files of {JPEG_SIZE}x{JPEG_SIZE} (mean {mean_size / 1024:.0f} kB) in {root}, "
              f"image_folder(size={jpeg_size}) (resize {round(jpeg_size * 8 / 7)} + centre crop + normalise), "
              f"batch {args.batch_size}, pin_memory={device.type == 'cuda'}")
        print(f"{'workers':>7s} {'decode only img/s':>18s} {'collect_references img/s':>25s} {'collect/decode':>15s}"
              + (f" {'collect/forward in memory':>26s}" if fwd_rate else "") + f" {'others busy':>12s}")
        rows = []
        for w in [int(v) for v in args.workers.split(",") if v.strip()]:
            with Measure(device) as m_dec:
                decode_only(folder, args.batch_size, w, device.type == "cuda")
            with Measure(device) as m_jc, ctx():
                pt.collect_references(model, folder, layer, n_ref=min(n_ref, n_jpeg), batch_size=args.batch_size,
                                      device=device, num_workers=w, progress=False)
            dec_rate, jc_rate = n_jpeg / m_dec.wall, n_jpeg / m_jc.wall
            line = f"{w:7d} {dec_rate:18.1f} {jc_rate:25.1f} {jc_rate / dec_rate:15.2f}"
            if fwd_rate:
                line += f" {jc_rate / fwd_rate:26.2f}"
            print(line + f" {m_jc.busy():>12s}")
            rows.append({"workers": w, "decode_img_s": dec_rate, "collect_img_s": jc_rate})
        result.update(jpeg_files=n_jpeg, jpeg_mean_bytes=mean_size, jpeg=rows)
        if tmp is not None:
            tmp.cleanup()
    print(f"load average (1 min) at end: {common.load_avg()}")
    common.write_json(args.json, result)
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latent channels, SD3's trade-off at toy scale: autoencoders with 4, 8 and 16 latent channels trained by one
recipe on the shapes data, their reconstruction PSNR, and the generation quality one fixed-size MMDiT reaches on each.

Chapter: "Stable Diffusion 3" (``chapters/sd3.ipynb``, section "Latent channels"). Esser et al. 2024, section 5.2.1
and Table 3: reconstruction improves with the channel count ``C``; a larger latent is harder to model, and only a
large enough denoiser turns the better reconstruction into better samples.

Fair by construction: every autoencoder is :func:`lib.latent.autoencoder.train_autoencoder` with the shipped
4-channel one's settings (``python -m lib.latent.autoencoder --steps 2500``), only ``latent_channels`` changing, and
decodes with **its own** decoder (the shipped 4-channel autoencoder included: the fine-tuned decoder of
``lib.latent.decoder_ft`` exists for ``C = 4`` only and is not used here). Every MMDiT is
:func:`lib.sd3.pipeline.train_mmdit` with one :class:`~lib.sd3.pipeline.SD3TrainConfig` (same width, depth, steps,
learning rate and seed; only the patch embedding's input and the head's output follow ``C``), conditioned on the same
frozen text tower, sampled by the same Euler sampler at the same guidance weight and judged by the same attribute
judge (:func:`lib.latent.study.run`) on the same captions.

    python -m lib.sd3.channels run                      # every stage below, skipping outputs that exist
    python -m lib.sd3.channels autoencoder --channels 8 # -> weights/shapes_autoencoder_c8.safetensors (+ .json)
    python -m lib.sd3.channels mmdit --channels 8       # train + judge one C -> <workdir>/channels_c8.json
    python -m lib.sd3.channels merge                    # -> results/sd3/channels.json

``--shift-ablation`` also samples every ``C > 4`` on SD3's grid shifted by ``alpha = sqrt(C / 4)``
(:func:`lib.diffusion.rectified.resolution_shift` with the latent's element count in place of the pixel count): if a
larger latent fails because the unchanged grid leaves it at too little noise, the shifted grid recovers accuracy.

Glossary
--------
C         latent channels; latents ``(B, C, 8, 8)``, scaled by the autoencoder's ``scale_factor`` (unit variance)
PSNR      ``lib.latent.autoencoder.psnr`` of test reconstructions (1000 images, seed 1, posterior mean)
joint     the judge's one-object joint accuracy (shape, colour, size, row, column all right)
binding   the judge's two-object binding accuracy
alpha     sampling-grid shift of the ablation, ``sqrt(C / 4)``: 1 for ``C = 4``, ``sqrt(2)`` for 8, 2 for 16
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, sha256
from lib.diffusion.rectified import resolution_shift
from lib.sd3.pipeline import RESULTS, SD3Pipeline, SD3TrainConfig, save_mmdit, train_mmdit
from lib.utils import spread

CHANNELS = (4, 8, 16)
"""Latent channel counts of the study (Stable Diffusion: 4; SD3: 16)."""
AE_STEPS = 2500
"""The shipped 4-channel autoencoder's training steps (``weights/shapes_autoencoder.json``)."""
MMDIT = SD3TrainConfig(steps=1500, lr=0.002)
"""The one MMDiT configuration trained on every ``C`` (the shipped MMDiT's, with its own step count)."""
WORKDIR = Path(__file__).resolve().parents[2] / "results" / "tmp" / "sd3_channels"
"""MMDiT checkpoints and per-``C`` results (git-ignored); the merged table goes to ``results/sd3/channels.json``."""


def autoencoder_path(latent_channels: int, directory: str | Path = WEIGHTS_DIR) -> Path:
    """The shipped autoencoder for ``C = 4``, ``<directory>/shapes_autoencoder_c<C>.safetensors`` otherwise."""
    if not isinstance(latent_channels, int) or isinstance(latent_channels, bool) or latent_channels < 1:
        raise ValueError(f"latent_channels must be a positive int, got {latent_channels!r}")
    if latent_channels == 4 and Path(directory) == WEIGHTS_DIR:
        from lib.latent.train import AUTOENCODER

        return AUTOENCODER
    return Path(directory) / f"shapes_autoencoder_c{latent_channels}.safetensors"


def load_channel_autoencoder(path: str | Path, latent_channels: int):
    """The autoencoder at ``path`` with its own decoder, frozen, in eval mode; ``ValueError`` if it does not have
    ``latent_channels`` channels."""
    from lib.latent.autoencoder import load_autoencoder

    trained = load_autoencoder(path)
    if trained.config.latent_channels != latent_channels:
        raise ValueError(f"{Path(path).name} has {trained.config.latent_channels} latent channels, "
                         f"latent_channels={latent_channels} was asked for")  # fmt: skip
    trained.model.eval().requires_grad_(False)
    return trained


def train_channel_autoencoder(latent_channels: int, path: str | Path, command: str, steps: int = AE_STEPS,
                              n_eval: int = 1000, **overrides) -> Path:  # fmt: skip
    """Train the shipped recipe (:class:`~lib.latent.autoencoder.AutoencoderConfig` defaults, ``steps``) with
    ``latent_channels`` channels and save it with the same figures as ``python -m lib.latent.autoencoder``.
    ``overrides`` (other config fields) exist for tests at tiny sizes."""
    from lib.latent.autoencoder import AutoencoderConfig, evaluate_autoencoder, save_autoencoder, train_autoencoder

    config = AutoencoderConfig(latent_channels=latent_channels, steps=steps, **overrides)
    trained = train_autoencoder(config)
    hist = trained.history
    figures = {"config": dataclasses.asdict(config), "train_seconds": hist.seconds,
               "final_rec_mean_last_10": hist.last("rec", 10), "final_kl_mean_last_10": hist.last("kl", 10),
               "n_parameters": sum(p.numel() for p in trained.model.parameters()),
               **evaluate_autoencoder(trained, n_eval)}  # fmt: skip
    return save_autoencoder(trained, path, command, extra={"results": figures})


def run_channel(ae_path: str | Path, latent_channels: int, config: SD3TrainConfig, checkpoint: str | Path,
                command: str, *, w: float = 2.0, seeds: tuple[int, ...] = (0, 1, 2), n: int = 200,
                eval_steps: int = 25, n_psnr: int = 1000, shift_ablation: bool = False, clip=None,
                judge=None) -> dict:  # fmt: skip
    """Train the MMDiT of ``config`` on the latents of the autoencoder at ``ae_path`` (``latent_channels``
    channels), save it to ``checkpoint``, and measure: the autoencoder's test PSNR and the judge on its
    reconstructions (the ceiling of generation), the MMDiT's training loss and time, and the judge's rates on
    ``n`` one- and ``n`` two-object captions, one sample per caption and seed at ``eval_steps`` Euler steps; with
    ``shift_ablation`` and ``C > 4``, the same again on the grid shifted by ``alpha = sqrt(C / 4)``."""
    from lib.latent.autoencoder import evaluate_autoencoder
    from lib.latent.study import run

    trained_ae = load_channel_autoencoder(ae_path, latent_channels)
    ae, clip_sha = trained_ae.model, None
    if clip is None:
        from lib.latent.clip import load_clip
        from lib.latent.train import CLIPS

        clip, clip_sha = load_clip(CLIPS["clip"]), sha256(CLIPS["clip"])
    model, hist, _ = train_mmdit(config, autoencoder=ae, clip=clip)
    shas = {"autoencoder_sha256": sha256(ae_path), "clip_sha256": clip_sha}
    path = save_mmdit(model, hist, shas, config, checkpoint, command)
    _, meta = load_checkpoint(path)  # sha256 verified
    pipe = SD3Pipeline(model, ae, clip)
    pipe.metadata = meta
    sizes = {"one": n, "two": n}
    judged = run(pipe, [float(w)], list(seeds), sizes, steps=eval_steps, judge=judge)
    shifted = None
    if shift_ablation and latent_channels > 4:
        pipe.shift = resolution_shift(latent_channels, 4)
        shifted = {
            "shift": pipe.shift,
            "judge": run(pipe, [float(w)], list(seeds), sizes, steps=eval_steps, judge=judge),
        }
    return {
        "latent_channels": latent_channels,
        "autoencoder": {
            "file": Path(ae_path).name,
            "sha256": shas["autoencoder_sha256"],
            "train_command": (trained_ae.metadata or {}).get("provenance", {}).get("command"),
            "config": (trained_ae.metadata or {}).get("config"),
            **evaluate_autoencoder(trained_ae, n_psnr),
        },
        "mmdit": {
            "checkpoint": Path(path).name,
            "sha256": meta["sha256"],
            "config": dataclasses.asdict(config),
            "model": dataclasses.asdict(model.config),
            "train_seconds": hist.seconds,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "final_loss_mean_last_10": hist.last("loss", 10),
            "loss_curve": hist.metrics["loss"],
        },
        "evaluation": {
            "w": float(w),
            "seeds": list(seeds),
            "sizes": sizes,
            "steps": eval_steps,
            "sampler": "Euler on flow_match_grid(steps, shift=1)",
            "judge": judged,
            "shift_ablation": bool(shift_ablation),
            "shifted": shifted,
        },
    }


def merge(parts: dict[int, dict]) -> dict:
    """One row per ``C`` from :func:`run_channel`'s results: PSNR, scale factor, the judge on reconstructions,
    training loss, and the judged accuracies (mean, std and per-seed values over sampling seeds). ``ValueError``
    unless every part used the same MMDiT configuration and the same evaluation."""
    if not parts:
        raise ValueError("parts is empty: run `python -m lib.sd3.channels mmdit --channels C` first")
    ref = next(iter(parts.values()))
    same = {"the MMDiT config": lambda p: p["mmdit"]["config"],
            "the evaluation": lambda p: {k: p["evaluation"].get(k) for k in ("w", "seeds", "sizes", "steps",
                                                                               "shift_ablation")}}  # fmt: skip
    for C, part in parts.items():
        if part["latent_channels"] != C:
            raise ValueError(f"part for C={C} holds latent_channels={part['latent_channels']}")
        for what, get in same.items():
            if get(part) != get(ref):
                raise ValueError(f"C={C} differs in {what} ({get(part)!r} vs {get(ref)!r}): the comparison is unfair")
    rows = []
    for C in sorted(parts):
        p = parts[C]
        ae, mm, ev = p["autoencoder"], p["mmdit"], p["evaluation"]
        seeds = ev["judge"]["w"][str(float(ev["w"]))]["seeds"]
        row = {"latent_channels": C, "psnr_test": ae["psnr_test"], "psnr_test_gradient": ae["psnr_test_gradient"],
               "psnr_heldout": ae["psnr_heldout"], "scale_factor": ae["scale_factor"],
               "judge_reconstructions_joint": (ae.get("judge_reconstructions_test") or {}).get("joint"),
               "mmdit_final_loss": mm["final_loss_mean_last_10"], "mmdit_train_seconds": mm["train_seconds"],
               "mmdit_n_parameters": mm["n_parameters"]}  # fmt: skip
        shifted = ev.get("shifted")
        for tag, judged in (("", seeds), ("shifted_", shifted and shifted["judge"]["w"][str(float(ev["w"]))]["seeds"])):
            if not judged:
                continue
            for g, key in (("one", "joint"), ("one", "shape"), ("one", "colour"), ("two", "binding"), ("two", "count")):
                vals = [judged[s][g][key] for s in judged]
                row[f"{tag}{g}_{key}"] = spread(vals)
        if shifted:
            row["shift"] = shifted["shift"]
        rows.append(row)
    return {"channels": sorted(parts), "mmdit_config": ref["mmdit"]["config"],
            "evaluation": {k: ref["evaluation"].get(k) for k in ("w", "seeds", "sizes", "steps", "sampler",
                                                                 "shift_ablation")},
            "table": rows, "runs": {str(C): parts[C] for C in sorted(parts)}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from lib.utils import load_results, save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("run", "autoencoder", "mmdit", "merge"))
    parser.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS))
    parser.add_argument("--ae-steps", type=int, default=AE_STEPS, help="autoencoder steps (the shipped recipe)")
    parser.add_argument("--steps", type=int, default=MMDIT.steps, help="MMDiT steps, the same for every C")
    parser.add_argument("--lr", type=float, default=MMDIT.lr)
    parser.add_argument("--seed", type=int, default=MMDIT.seed)
    parser.add_argument("--w", type=float, default=2.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    parser.add_argument(
        "--shift-ablation", action="store_true", help="also sample C > 4 on the grid shifted by sqrt(C/4)"
    )
    parser.add_argument("--n", type=int, default=200, help="captions per set (one- and two-object)")
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--ae-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "channels.json")
    args = parser.parse_args(argv)
    if len(set(args.channels)) != len(args.channels) or min(args.channels) < 1:
        parser.error(f"--channels must be distinct positive ints, got {args.channels}")
    seed_everything(0, threads=args.threads)
    command = "python -m lib.sd3.channels " + " ".join(sys.argv[1:] if argv is None else argv)
    config = dataclasses.replace(MMDIT, steps=args.steps, lr=args.lr, seed=args.seed)
    part = lambda C: args.workdir / f"channels_c{C}.json"  # noqa: E731
    for C in args.channels if args.what in ("run", "autoencoder") else ():
        ae_path = autoencoder_path(C, args.ae_dir)
        if ae_path == autoencoder_path(4):
            if args.what == "autoencoder":
                parser.error("C=4 is the shipped autoencoder (python -m lib.latent.autoencoder): not retrained here")
            continue
        if args.what == "autoencoder" or not ae_path.exists():
            train_channel_autoencoder(C, ae_path, command, steps=args.ae_steps)
            print(f"C={C}: saved {ae_path}", flush=True)
    for C in args.channels if args.what in ("run", "mmdit") else ():
        if args.what == "mmdit" or not part(C).exists():
            res = run_channel(autoencoder_path(C, args.ae_dir), C, config,
                              args.workdir / f"shapes_mmdit_c{C}.safetensors", command, w=args.w,
                              seeds=tuple(args.seeds), n=args.n, eval_steps=args.eval_steps,
                              shift_ablation=args.shift_ablation)  # fmt: skip
            save_results(part(C), res, command)
            print(f"C={C}: {part(C)}", flush=True)
    if args.what in ("run", "merge"):
        files = {C: load_results(part(C)) for C in args.channels if part(C).exists()}
        merged = merge({C: f["results"] for C, f in files.items()})
        merged["sources"] = {str(C): f["provenance"] for C, f in files.items()}
        save_results(args.out, merged, command)
        for row in merged["table"]:
            j, b = row["one_joint"], row["two_binding"]
            print(f"C={row['latent_channels']:2d}: PSNR {row['psnr_test']:.2f} dB, loss {row['mmdit_final_loss']:.3f}, "
                  f"joint {j['mean']:.3f} +- {j['std']:.3f}, binding {b['mean']:.3f} +- {b['std']:.3f}")  # fmt: skip
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

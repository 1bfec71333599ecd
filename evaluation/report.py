# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""`results.md`: the tables of one evaluation (each pipeline, its ratio to the baseline, the paper's for reference)."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from evaluation.c2st import C2ST_METHOD
from evaluation.locality import ALL_EDITS, BLEND_SUFFIX, COLOR_SPACES, NORMALIZATIONS, SEAM_WIDTH
from evaluation.metrics import FID_METHOD, PR_METHOD
from evaluation.stats import CI_METHOD, CI_MIN_SAMPLES, ZERO_MEAN_FLOOR

# Liu et al. 2025, Table 1: locality MSE_out / MSE_in (paper normalisation), CelebA 64x64, lower is better.
PAPER_TABLE1 = {
    "interpretable DDPM": {"mouth": 0.0369, "eyes": 0.0295, "nose": 0.0683},
    "DDPM": {"mouth": 0.0869, "eyes": 0.0837, "nose": 0.2035},
    "IGAN": {"mouth": 0.0606, "eyes": 0.0802, "nose": 0.0995},
    "RePaint": {"mouth": 0.0553, "eyes": 0.7806, "nose": 0.1125},
}


PAPER_FID = {"DDPM": "12.86", "interpretable DDPM": "18.44-19.42"}


def _plural(n: int, word: str, plural: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _fmt(stats: Optional[dict], digits: int = 4) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    s = f"{stats['mean']:.{digits}f}"
    if stats.get("ci95"):
        s += f" [{stats['ci95'][0]:.{digits}f}, {stats['ci95'][1]:.{digits}f}]"
    elif isinstance(stats.get("n"), int) and 1 < stats["n"] < CI_MIN_SAMPLES:
        s += f" (n = {stats['n']}, too few for a CI)"
    return s


def _ratio(a: Optional[dict], b: Optional[dict]) -> str:
    if not a or not b or a.get("mean") is None or b.get("mean") is None or abs(b["mean"]) < ZERO_MEAN_FLOOR:
        return "—"
    paired = a.get("ratio_to_baseline")
    if paired and paired.get("ratio") is not None:
        s = f"{paired['ratio']:.3f}"
        if paired.get("ci95"):
            s += f" [{paired['ci95'][0]:.3f}, {paired['ci95'][1]:.3f}]"
        elif paired["n"] < CI_MIN_SAMPLES:
            s += f" (n = {paired['n']}, too few for a CI)"
        return s
    return f"{a['mean'] / b['mean']:.3f}"


def _difference(a: Optional[dict], b: Optional[dict]) -> str:
    """The comparison column of an accuracy: the difference to the baseline (a ratio of accuracies reads badly)."""
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return "—"
    return f"{a['mean'] - b['mean']:+.3f} (difference)"


def _realism_rows(row, fid_of) -> List[str]:
    """Table rows of the C2ST accuracy and precision/recall (`row` and the FID stage getter of `markdown_report`)."""

    def c2st(n):
        res = fid_of(n).get("c2st") or {}
        return {"mean": res["accuracy"], "ci95": res["ci95"]} if "accuracy" in res else None

    def pr(key):
        return lambda n: (fid_of(n).get("precision_recall") or {}).get(key)

    return [
        row(["C2ST accuracy (0.5 = indistinguishable)"], c2st, ["—"], digits=3, compare=_difference),
        row(["precision (realistic share)"], pr("precision"), ["—"], digits=3),
        row(["recall (covered share of real faces)"], pr("recall"), ["—"], digits=3),
    ]


def _realism_notes(fid_stage: dict) -> List[str]:
    """The paragraph under the realism table that says how the C2ST and precision/recall were measured."""
    notes = []
    c2st = fid_stage.get("c2st") or {}
    if "accuracy" in c2st:
        notes.append(
            f"C2ST: {_plural(c2st['num_per_class'], 'generated sample')} against as many real faces; {C2ST_METHOD}. "
            "The baseline column gives the difference of accuracies."
        )
    elif c2st.get("skipped"):
        notes.append(f"C2ST skipped: {c2st['skipped']}.")
    pr = fid_stage.get("precision_recall")
    if pr:
        notes.append(f"Precision/recall: {pr['num_per_set']} vectors per set; {PR_METHOD}.")
    return [" ".join(notes), ""] if notes else []


class _Tables:
    """The column layout of the report's tables (each pipeline, then each main pipeline's comparison to its baseline)
    and the row builders every section uses."""

    def __init__(self, results: dict):
        self.results = results
        self.cfg = cfg = results["config"]
        self.names = names = list(results["pipelines"])
        base = cfg.get("baseline_name")
        self.base_of = cfg.get("baseline_of") or ({n: base for n in names if n != base} if base else {})
        self.mains = [n for n in names if n not in set(self.base_of.values())]
        self.cols = names + [f"{m} / {self.base_of[m]}" for m in self.mains if m in self.base_of]

    def header(self, first: Sequence[str], extra: Sequence[str] = ()) -> List[str]:
        h = list(first) + self.cols + list(extra)
        return ["| " + " | ".join(h) + " |", "|" + "---|" * len(h)]

    def row(self, first: Sequence[str], getter, extra: Sequence[str] = (), digits: int = 4, compare=None) -> str:
        vals = [_fmt(getter(n), digits) for n in self.names]
        vals += [(compare or _ratio)(getter(m), getter(self.base_of[m])) for m in self.mains if m in self.base_of]
        return "| " + " | ".join(list(first) + vals + list(extra)) + " |"

    def stage(self, n: str, key: str) -> dict:
        return self.results["pipelines"][n].get(key) or {}

    def first(self, key: str, required: Optional[str] = None) -> Optional[dict]:
        """The `key` stage of the first pipeline that measured it (with a true `required` entry when given), whose
        counts and names a section's text quotes; None when no pipeline did, and the section is left out."""
        for n in self.names:
            found = self.stage(n, key)
            if found and (required is None or found.get(required)):
                return found
        return None

    def locality_layout(self):
        """The edits measured by some pipeline (in `ALL_EDITS` order) and the concepts of the first one."""
        loc0 = self.first("locality")
        loc_edits = [e for e in ALL_EDITS if any(e in self.stage(n, "locality") for n in self.names)]
        return loc_edits, [c for c in loc0.get(loc_edits[0], {})]

    def leakage_rows(self, key: str, label: str) -> List[str]:
        """The leakage table of an attribution stage (`"attribution"`, `"end_to_end"`): over all regions, then into
        each region of the first measured pipeline's game."""
        lines = self.header(["metric"])
        lines.append(self.row([f"{label} (all regions)"], lambda n: self.stage(n, key).get("leakage")))
        for r in self.first(key, "num_samples")["region_names"]:
            lines.append(
                self.row([f"{label} into {r}"], lambda n: self.stage(n, key).get("region_leakage", {}).get(r))
            )
        return lines


def _locality_section(t: _Tables) -> List[str]:
    """The locality table: every edit, concept, colour space and normalisation."""
    cfg, header, row, stage = t.cfg, t.header, t.row, t.stage
    lines: List[str] = []
    if t.first("locality"):
        loc_edits, concepts = t.locality_layout()
        lines += [
            "## Locality of edits (MSE_out / MSE_in, lower is better)",
            "",
            f"{_plural(cfg['num_pairs'], 'seeded pair')} per concept. `paper` normalisation divides MSE_out by the inside area "
            "(as the paper writes it), `area` by the outside area. Masks: each pipeline's concept masks of the original "
            f"images ({cfg['mask_source']})"
            + (f", grown by {cfg['mask_dilation']} px" if cfg.get("mask_dilation") else "")
            + f"; swaps exchange x_T in the {cfg['swap_mask_from']} of A's and B's masks and "
            "both edits are scored with that mask; a pair's value is the mean of its two edits. Resample redraws x_T "
            "inside A's mask. Paper columns: Liu et al. 2025 Table 1 (CelebA 64, paper normalisation, colour space "
            "not stated; heatmaps in CIELAB), for reference only: different data."
            + (
                " Edits ending in `_blend` are the peer: the same edit with `blend=True` (RePaint / blended-diffusion "
                "style masked DDIM: after every step the pixels outside the region take the unedited trajectory's "
                "x_t), local outside the region by construction (its locality is 0 up to float error), so the "
                "tables below (MSE_ref, seam, realism) are where it differs."
                if any(e.endswith(BLEND_SUFFIX) for e in loc_edits)
                else ""
            ),
            "",
        ]
        lines += header(["edit", "concept", "colour", "norm."], ["paper: interp. DDPM", "paper: DDPM"])
        for edit in loc_edits:
            for c in concepts:
                for cs in COLOR_SPACES:
                    for norm in NORMALIZATIONS:
                        paper = (
                            [
                                str(PAPER_TABLE1["interpretable DDPM"].get(c, "—")),
                                str(PAPER_TABLE1["DDPM"].get(c, "—")),
                            ]
                            if edit == "swap" and norm == "paper"
                            else ["—", "—"]
                        )
                        lines.append(
                            row(
                                [edit, c, cs, norm],
                                lambda n: stage(n, "locality").get(edit, {}).get(c, {}).get(f"{cs}/{norm}"),
                                paper,
                            )
                        )
    return lines


def _edit_quality_section(t: _Tables) -> List[str]:
    """MSE_ref and seam of the edits and the realism (KID, FID) of the edited faces, under the locality table."""
    names, header, row, stage = t.names, t.header, t.row, t.stage
    lines: List[str] = []
    if not t.first("locality"):
        return lines
    loc_edits, concepts = t.locality_layout()
    lines += [
        "",
        "MSE_ref of swaps (StyleMapGAN's measure, RGB): inside the swapped region, MSE(edited, donor) / "
        "MSE(original, donor); below 1 the part moved towards the donor's, 0 is the donor's part exactly.",
        "",
    ]
    lines += header(["edit", "concept", "measure", ""])
    for edit in [e for e in loc_edits if e.startswith("swap")]:
        for c in concepts:
            lines.append(
                row(
                    [edit, c, "MSE_ref", ""],
                    lambda n: stage(n, "locality").get(edit, {}).get(c, {}).get("mse_ref"),
                )
            )
    if any(stage(n, "locality").get(e, {}).get(c, {}).get("seam") for n in names for e in loc_edits for c in concepts):
        lines += [
            "",
            f"Seam score: mean colour gradient magnitude on the {SEAM_WIDTH}-px band straddling the region's border "
            "in the edited image, divided by the same on the same band of the unedited image (1 = as smooth as "
            "the unedited face, above 1 = a seam); a pair's value is the mean of its edits.",
            "",
        ]
        lines += header(["edit", "concept", "measure", ""])
        for edit in loc_edits:
            for c in concepts:
                lines.append(
                    row(
                        [edit, c, "seam", ""],
                        lambda n: stage(n, "locality").get(edit, {}).get(c, {}).get("seam"),
                        digits=3,
                    )
                )
    r0 = t.first("edit_realism")
    if r0:
        lines += [
            "",
            "Realism of the edited faces: KID (x 1000) and FID of every edited image of the locality pairs (all "
            f"concepts; {next(iter(r0.values()))['num_images']} images per edit) against the real test faces, "
            "as the FID table below (few images: FID is biased upwards, compare it between rows only).",
            "",
        ]
        lines += header(["edit", "measure"])
        for edit in loc_edits:
            lines.append(
                row(
                    [edit, "KID x 1000"],
                    lambda n: (
                        {"mean": 1000 * stage(n, "edit_realism")[edit]["kid"]}
                        if edit in stage(n, "edit_realism")
                        else None
                    ),
                    digits=2,
                )
            )
            lines.append(
                row(
                    [edit, "FID"],
                    lambda n: (
                        {"mean": stage(n, "edit_realism")[edit]["fid"]} if edit in stage(n, "edit_realism") else None
                    ),
                    digits=1,
                )
            )
    lines.append("")
    return lines


def _realism_section(t: _Tables) -> List[str]:
    """FID, KID, off-colour rate, C2ST accuracy and precision/recall of the generated samples."""
    cfg, header, row, stage, results = t.cfg, t.header, t.row, t.stage, t.results
    lines: List[str] = []
    f0 = t.first("fid")
    if f0:
        lines += [
            "## Realism (FID, lower is better)",
            "",
            f"{_plural(f0['num_samples'], 'generated sample')} against {_plural(f0['num_reference'], 'real face')} "
            f"({cfg['fid_reference_split']} split). {FID_METHOD}",
            "",
        ]
        lines += header(["metric"], ["paper (CelebA 64, 10k): DDPM / interp."])
        lines.append(
            row(
                ["FID"],
                lambda n: {"mean": stage(n, "fid").get("fid")} if stage(n, "fid") else None,
                [f"{PAPER_FID['DDPM']} / {PAPER_FID['interpretable DDPM']}"],
                digits=2,
            )
        )
        lines.append(
            row(
                ["KID x 1000"],
                lambda n: {"mean": 1000 * stage(n, "fid")["kid"]} if stage(n, "fid").get("kid") is not None else None,
                ["—"],
                digits=2,
            )
        )
        lines.append(
            row(["off-colour rate"], lambda n: (stage(n, "fid").get("off_colour") or {}).get("rate"), ["—"], digits=3)
        )
        lines += _realism_rows(row, lambda n: stage(n, "fid"))
        lines.append("")
        lines += _realism_notes(f0)
        real_colour = results.get("real_faces_colour")
        if real_colour:
            oc = real_colour["off_colour"]
            lines += [
                f"KID: unbiased MMD^2 of the Inception features (cubic kernel), {f0.get('num_subsets')} subsets of "
                f"{f0.get('subset_size')}. Off-colour rate: share of samples in which the CIELAB distance between some "
                "part's mean colour and the skin's exceeds the 99th percentile of that distance on the real faces "
                "(parts found by the face parser, on samples and real faces alike; 95% Wilson interval; thresholds "
                + ", ".join(f"{c} {v:.1f}" for c, v in oc["thresholds"].items())
                + f"). Real faces: {oc['rate']['mean']:.3f} (by construction at most ~3%).",
                "",
            ]
    return lines


def _attribution_section(t: _Tables) -> List[str]:
    """Per-step Shapley leakage, overall and per region."""
    lines: List[str] = []
    a0 = t.first("attribution", "num_samples")
    if a0:
        lines += [
            "## Disentanglement (exact Shapley leakage, lower is better)",
            "",
            f"Off-diagonal share of the area-weighted |φ| matrix (all 2^K coalitions, K = {len(a0['region_names'])}), "
            f"averaged over {_plural(len(a0['timesteps']), 'timestep')} and {_plural(a0['num_samples'], 'sample')}; per region: share of "
            "output region k's |φ| that comes from other input regions. Curve over t: `figures/leakage_over_t.png`.",
            "",
        ]
        lines += t.leakage_rows("attribution", "leakage")
        lines.append("")
    return lines


def _end_to_end_section(t: _Tables) -> List[str]:
    """End-to-end Shapley leakage (x_T regions -> final image regions)."""
    row, stage = t.row, t.stage
    lines: List[str] = []
    e0 = t.first("end_to_end", "num_samples")
    if e0:
        lines += [
            "## End-to-end attribution (what the edits do; leakage, lower is better)",
            "",
            f"Players: the K = {len(e0['region_names'])} regions of x_T (absent = that region of another seeded x_T); "
            f"values: the regions of the final image; exact Shapley values from all {_full_runs(e0)} full sampling runs "
            f"per sample (the run's sampler), {_plural(e0['num_samples'], 'sample')}. Leakage = off-diagonal share of the "
            "area-weighted |φ| matrix, as above. Figure: `figures/end_to_end_attribution.png`.",
            "",
        ]
        lines += t.leakage_rows("end_to_end", "end-to-end leakage")
        lines.append(
            row(["seconds per image"], lambda n: {"mean": stage(n, "end_to_end").get("seconds_per_sample")}, digits=1)
        )
        lines.append("")
    return lines


def _emergence_section(t: _Tables) -> List[str]:
    """When each concept is decided: the emergence step per mode and concept."""
    header, row, stage = t.header, t.row, t.stage
    lines: List[str] = []
    m0 = t.first("emergence", "timesteps")
    if m0:
        lines += [
            "## When each part is decided (emergence)",
            "",
            f"{_plural(m0['num_pairs'], 'seeded pair')} per concept; A receives B's region (A's concept mask) at "
            f"sampling step s (of {m0['num_inference_steps']}; s in {m0['step_indices']}) instead of at x_T (with "
            "eta > 0, with B's later step noise there). Fraction = "
            "projection of the change it makes inside the region on the full swap's change (1 at s = 0). Mode "
            "`trajectory`: the region gets B's x_t at that step; `noise`: A's predicted x_0 with B's predicted noise "
            "at that step (only what the noise still carries moves). Emergence step: the first computed s at which "
            "the fraction is below one half (the number of steps where it never is). Figure: "
            "`figures/emergence_curves.png`.",
            "",
        ]
        lines += header(["mode", "concept", "measure"])
        for mode in m0["modes"]:
            for c in m0[mode]:
                lines.append(
                    row(
                        [mode, c, "emergence step"],
                        lambda n: stage(n, "emergence").get(mode, {}).get(c, {}).get("emergence_step"),
                        digits=1,
                    )
                )
        lines.append("")
    return lines


# the per-concept columns of the strength sweep, in this order
SWEEP_MEASURES = ("swap", "resample", "donor")


def _strength_sweep_table(t: _Tables, sweep: List[dict]) -> List[str]:
    """The real-photo edits over the inversion strength: one row per pipeline and strength, the concepts of `sweep`
    (the first measured pipeline's) under each of `SWEEP_MEASURES`."""
    concepts = list(sweep[0]["swap"])
    lines = [
        "",
        f"Over the inversion strength ({_plural(sweep[0]['num_pairs'], 'pair')} per point; RGB, paper "
        "normalisation; `figures/real_strength_sweep.png`):",
        "",
        "| pipeline | strength | PSNR (dB) | "
        + " | ".join(" | ".join(f"{m} {c}" for c in concepts) for m in SWEEP_MEASURES)
        + " |",
        "|" + "---|" * (3 + len(SWEEP_MEASURES) * len(concepts)),
    ]
    for n in t.names:
        for p in t.stage(n, "real").get("strength_sweep") or []:
            lines.append(
                f"| {n} | {p['strength']:g} | {p['reconstruction_psnr']:.2f} | "
                + " | ".join(" | ".join(f"{p[m].get(c, float('nan')):.3f}" for c in concepts) for m in SWEEP_MEASURES)
                + " |"
            )
    return lines


def _real_photos_section(t: _Tables) -> List[str]:
    """Real photos: reconstruction PSNR, locality of their edits, donor ratio, strength sweep."""
    names, header, row, stage = t.names, t.header, t.row, t.stage
    lines: List[str] = []
    r0 = t.first("real")
    if r0:
        lines += [
            "## Real photos (partial DDIM inversion, then an edit)",
            "",
            f"{_plural(r0['num_pairs'], 'pair')} of test faces, `inv = pipe.invert(photo, strength={r0.get('strength')})` (DDIM "
            "inversion down to the step at about strength * T), then `swap_regions(inv_a, inv_b, mask)` / "
            "`resample_region(inv_a, mask)` with their defaults (the trajectory continues from t0, unclipped). Masks: "
            "the faces' own part label maps (swap: union of A's and B's; resample: A's). Locality MSE_out / MSE_in, "
            "paper normalisation, against the unedited reconstruction. Donor ratio: inside the region, MSE(edited, "
            "donor photo) / MSE(original photo, donor photo) (RGB; goal <= 0.6). Locality on generated faces: the "
            "table above, same pipeline.",
            "",
        ]
        lines += header(["metric"])
        lines.append(
            row(["reconstruction PSNR (dB)"], lambda n: stage(n, "real").get("reconstruction_psnr"), digits=2)
        )
        for c in r0["locality"]["reconstruction"]:
            for cs in COLOR_SPACES:
                lines.append(
                    row(
                        [f"swap {c} locality ({cs})"],
                        lambda n: (
                            stage(n, "real")
                            .get("locality", {})
                            .get("reconstruction", {})
                            .get(c, {})
                            .get(f"{cs}/paper")
                        ),
                    )
                )
            for cs in COLOR_SPACES:
                lines.append(
                    row(
                        [f"resample {c} locality ({cs})"],
                        lambda n: stage(n, "real").get("resample_locality", {}).get(c, {}).get(f"{cs}/paper"),
                    )
                )
            lines.append(
                row([f"swap {c} donor ratio (rgb)"], lambda n: stage(n, "real").get("donor_ratio", {}).get(c))
            )
            for edit, key in (("swap", "locality"), ("resample", "resample_locality")) * any(
                stage(n, "locality") for n in names
            ):

                def vs_generated(n, edit=edit, key=key):
                    real = stage(n, "real")
                    real = real.get(key, {}).get("reconstruction", {}) if key == "locality" else real.get(key, {})
                    gen = stage(n, "locality").get(edit, {}).get(c, {}).get("rgb/paper")
                    real = real.get(c, {}).get("rgb/paper")
                    return {"mean": real["mean"] / gen["mean"]} if real and gen and gen.get("mean") else None

                lines.append(row([f"{edit} {c}: real / generated locality (rgb)"], vs_generated, digits=2))
        warnings = {n: stage(n, "real").get("warning") for n in names if stage(n, "real").get("warning")}
        for n, w in warnings.items():
            lines.append(f"\nWarning for `{n}`: {w}")
        sweep = r0.get("strength_sweep") or []
        if sweep:
            lines += _strength_sweep_table(t, sweep)
        lines.append("")
    return lines


def _cost_section(t: _Tables) -> List[str]:
    """Seconds per sample / pair of every stage, and the list of figures."""
    header, row, results = t.header, t.row, t.results
    lines: List[str] = ["## Cost", ""]
    lines += header(["stage"])
    for key, label in (
        ("locality", "locality: s per pair (all concepts, swap + resample)"),
        ("fid", "FID: s per generated sample"),
        ("fid_inception", "FID: s per Inception feature"),
        ("attribution", "attribution: s per sample"),
        ("end_to_end", "end-to-end attribution: s per sample"),
        ("emergence", "emergence: s per pair (all concepts and modes)"),
        ("real", "real photos: s per pair (invert + 3 concepts, swap + resample)"),
    ):

        def get(n, key=key):
            seconds = results["pipelines"][n].get("timings", {}).get(key)
            return None if seconds is None else {"mean": seconds}

        lines.append(row([label], get, digits=3))
    lines += [
        "",
        "Figures: " + ", ".join(f"`{os.path.relpath(p, results['output_dir'])}`" for p in results["figures"]),
        "",
    ]
    return lines


SECTIONS = (
    _locality_section,
    _edit_quality_section,
    _realism_section,
    _attribution_section,
    _end_to_end_section,
    _emergence_section,
    _real_photos_section,
    _cost_section,
)


def _full_runs(end_to_end: Dict[str, object]) -> object:
    """Full sampling runs per end-to-end sample (reports before the key was renamed say `num_full_ddim_runs_...`)."""
    return end_to_end.get("num_full_runs_per_sample", end_to_end.get("num_full_ddim_runs_per_sample"))


def _sampler_text(eta) -> str:
    """The sampler of a run's generated faces, as the report states it (`--eta`; None: each pipeline's own)."""
    if eta is None:  # reports of runs before the sampler was resolved at load time
        return "each pipeline's own eta, 0 unless its config sets one"
    return "DDIM, eta = 0" if float(eta) == 0 else f"eta = {float(eta):g}, step noise drawn from x_T"


def markdown_report(results: dict) -> str:
    """`results.md` of a results tree (`run`'s, without tensors): the header, then one section per measured stage."""
    t = _Tables(results)
    cfg, names, base = t.cfg, t.names, t.cfg.get("baseline_name")
    lines = [
        "# Evaluation",
        "",
        f"Generated {results['created']} by `{results['command']}`.",
        "",
        "Pipelines: "
        + ", ".join(f"`{n}` ({results['pipelines'][n]['path']})" for n in names)
        + (f"; baseline `{base}`." if base else "."),
        f"Device {cfg['device']}, {cfg['num_inference_steps']} steps ({_sampler_text(cfg.get('eta'))}), seed "
        f"{cfg['seed']}; x_0 clipping "
        "(clip_sample) of generation: "
        + ", ".join(f"`{n}` {results['pipelines'][n].get('clip_sample')}" for n in names)
        + (
            " (they differ: generated images are not sampled alike)"
            if len({results["pipelines"][n].get("clip_sample") for n in names}) > 1
            else ""
        )
        + "; inverted real images are regenerated unclipped in every pipeline.",
        f"Values are means with {CI_METHOD}.",
        "",
    ]

    for section in SECTIONS:
        lines += section(t)
    return "\n".join(lines)


def _strip_for_json(obj):
    """Drops tensors (figure examples, previews) from a result tree."""
    if isinstance(obj, dict):
        return {
            k: _strip_for_json(v)
            for k, v in obj.items()
            if k not in ("examples", "preview", "preview_c2st", "per_pair_values", "units", "edited_uint8")
        }
    if isinstance(obj, list):
        return [_strip_for_json(v) for v in obj]
    return obj

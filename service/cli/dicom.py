"""`labelqa dicomize` (image data set -> DICOM studies) and `labelqa inspect` (what labelqa reads from studies)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _load_vocab(path: Path | None):
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.vocabulary import VocabularyError, load_vocabulary

    if path is None:
        return None
    try:
        return load_vocabulary(path)
    except VocabularyError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def dicomize_cmd(
    dataset: Path = typer.Argument(..., help="Image folder (root/<class>/* or root/<split>/<class>/*), CSV or npz."),
    out: Path = typer.Argument(..., help="Output folder: one sub-folder per study, manifest.csv, vocabulary.toml."),
    vocabulary: Path | None = typer.Option(None, "--vocabulary", help="Vocabulary (TOML/JSON); default: derived."),
    seg: bool = typer.Option(False, "--seg", help="Write each label as a SEG (mask: given, else whole image)."),
    image_kind: str | None = typer.Option(None, "--image-kind", help="sc (Secondary Capture), dx (DX X-ray) or mr "
                                          "(MR, with plane geometry). Default: mr with SEG annotations, else sc."),
    modality: str = typer.Option("OT", "--modality", help="Modality of Secondary Capture images (OT, DX, MR...)."),
    body_part: str = typer.Option("CHEST", "--body-part", help="Body Part Examined of the images."),
    noise_rate: float = typer.Option(0.0, "--noise-rate", help="Fraction of labels to flip (of masks to corrupt, "
                                     "for images/ + masks/ data sets), in [0, 1)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --noise-rate and --sample."),
    sample: int | None = typer.Option(None, "--sample", min=1, help="Convert a random subset of this many images."),
    group_by: str | None = typer.Option(
        None, "--group-by", help="Regex on the source path; its first group (or match) is the study key."
    ),
    class_names: str | None = typer.Option(None, "--class-names", help="npz: comma-separated names of labels 0..n."),
    dims: int | None = typer.Option(None, "--dims", help="3: a volume set (NIfTI/NRRD/MHA in the MSD/nnU-Net layout "
                                    "or images/ + masks/), each case a CT or MR series with one SEG over it; "
                                    "default 3 when DATASET holds volumes, else 2."),
) -> None:
    """Convert an image data set into DICOM studies (image + TID 1500 SR or SEG label each).

    A folder with images/ and masks/ (same file stems; mask 0 = background, 255 or 1..K = classes)
    becomes image + DICOM SEG studies; --noise-rate then plants mask errors (recorded in the manifest).
    A volume set becomes one CT series (--modality MR: an MR series) with real geometry and one SEG per
    case; --noise-rate plants one 3-D error per chosen case (kind and changed voxels in the manifest).
    """
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.vocabulary import VocabularyError
    from service.demo.dicomize import DicomizeError, dicomize, dicomize_masks, is_mask_dataset

    vocab = _load_vocab(vocabulary)
    names = [c.strip() for c in class_names.split(",")] if class_names else None
    from tqdm import tqdm

    bar = tqdm(desc="dicomize", unit="img", disable=None)  # disable=None: no bar when not on a terminal

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    if dims not in (None, 2, 3):
        bar.close()
        typer.echo(f"error: --dims must be 2 or 3, not {dims}", err=True)
        raise typer.Exit(2)
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.cli.volumes import holds_volumes

    if dims == 3 or (dims is None and holds_volumes(dataset)):
        from service.demo.dicomize import dicomize_volumes  # as above: only when the command runs

        try:
            r = dicomize_volumes(dataset, out, vocabulary=vocab, modality="MR" if modality.upper() == "MR" else "CT",
                                 body_part=body_part.upper() if body_part != "CHEST" else None, noise_rate=noise_rate,
                                 seed=seed, sample=sample, progress=progress)
        except (DicomizeError, VocabularyError) as e:
            bar.close()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        bar.close()
        typer.echo(f"wrote {r.n_images} series with a SEG each ({r.n_flipped} with a planted 3-D error) to {r.out} "
                   f"in {r.seconds:.1f} s; manifest: {r.manifest}")
        return
    if is_mask_dataset(dataset):
        try:
            r = dicomize_masks(dataset, out, vocabulary=vocab, modality=modality.upper(), body_part=body_part.upper(),
                               noise_rate=noise_rate, seed=seed, sample=sample, progress=progress)
        except (DicomizeError, VocabularyError) as e:
            bar.close()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        bar.close()
        typer.echo(f"wrote {r.n_images} images with SEG masks to {r.out} (manifest: {r.manifest})")
        return
    try:
        r = dicomize(
            dataset,
            out,
            vocabulary=vocab,
            modality=modality.upper(),
            image_kind=image_kind.lower() if image_kind else None,
            body_part=body_part.upper(),
            seg=seg,
            noise_rate=noise_rate,
            seed=seed,
            sample=sample,
            group_by=group_by,
            class_names=names,
            progress=progress,
        )
    except (DicomizeError, VocabularyError) as e:
        bar.close()
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    bar.close()
    typer.echo(
        f"wrote {r.n_images} images with {'SEG' if seg else 'SR'} labels ({r.n_flipped} flipped) to {r.out} "
        f"in {r.seconds:.1f} s; manifest: {r.manifest}" + (f"; vocabulary: {r.vocabulary}" if r.vocabulary else "")
    )


def inspect_cmd(
    path: Path = typer.Argument(..., help="A DICOM file or a folder of studies."),
    vocabulary: Path | None = typer.Option(
        None, "--vocabulary", help="Vocabulary (TOML/JSON); default: PATH/vocabulary.toml if present, else open."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    no_pixels: bool = typer.Option(False, "--no-pixels", help="Do not decode the referenced images' pixels."),
) -> None:
    """List the labelled samples, the mask volumes (a SEG over a series: one per segment) and the issue
    records of every study under PATH."""
    import warnings

    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.annotations import read_studies

    warnings.filterwarnings("ignore", module="pydicom")  # odd values in foreign files: issues say what matters
    if not path.exists():
        typer.echo(f"error: {path} does not exist", err=True)
        raise typer.Exit(2)
    if vocabulary is None and path.is_dir() and (path / "vocabulary.toml").is_file():
        vocabulary = path / "vocabulary.toml"
    vocab = _load_vocab(vocabulary)
    sets = read_studies(path, vocab, load_pixels=not no_pixels, volumes=True)
    if as_json:
        doc = {"studies": [s.to_json_dict() for s in sets]}
        typer.echo(json.dumps(doc, indent=2))
        return
    if not sets:
        typer.echo("no DICOM instances found")
    for s in sets:
        typer.echo(f"study {s.study_uid or '(unreadable files)'}: {len(s.samples)} sample(s), {len(s.issues)} issue(s)")
        for smp in s.samples:
            p = smp.provenance
            extra = f" segment {p.segment_number}" if p.segment_number is not None else ""
            frame = f" frame {p.frame}" if p.frame is not None else ""
            typer.echo(f"  {smp.label:<20} image {p.image_uid}{frame}  from {p.source} {p.annotation_uid}{extra}")
        for mv in s.mask_volumes:
            shape = " x ".join(str(n) for n in mv.mask.shape)
            spacing = " x ".join(f"{v:.3g}" for v in mv.geometry.spacing)
            typer.echo(f"  {mv.label:<20} volume {shape} ({spacing} mm), {mv.voxels} voxels  from seg "
                       f"{mv.provenance.annotation_uid} segment {mv.segment_number}")
        for i in s.issues:
            typer.echo(f"  ISSUE {i.code}: {i.message}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.command("dicomize")(dicomize_cmd)
    app.command("inspect")(inspect_cmd)

"""Rule pretrain_faces: the static image set's faces found and aligned as the videos' are."""
from ferseq.common import logs
from ferseq.pretrain import image_faces, image_sets

with logs.step(snakemake.log[0]):
    images = snakemake.params.images
    image_set = image_sets.read_image_set(
        images["format"],
        images["path"],
        rafdb_images=images.get("rafdb_images") or "aligned",
        fer2013_csv=images.get("fer2013_csv"),
    )
    image_faces.extract_image_faces(
        image_set,
        snakemake.params.faces,
        snakemake.output.faces,
        snakemake.output.images,
        workers=snakemake.threads,
        partial_dir=snakemake.params.partial,
    )

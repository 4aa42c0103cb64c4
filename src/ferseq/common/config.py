"""Checks of the config that a JSON schema cannot express (values that refer to each other or to files).

The schema (``workflow/schemas/config.schema.yaml``) checks types, ranges and
keys first; :func:`check` then reports every remaining problem by its key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferseq.common.errors import ConfigError
from ferseq.common import initialisation

# The transformer sequence model's attention heads: its width (sequence_model.hidden) must divide by it.
# Here, not in ferseq.sequence_model, because the config check runs without torch and before any stage.
TRANSFORMER_HEADS = 4


def explain(config: dict[str, Any], schema: str | Path) -> str:
    """Every schema violation of ``config``, one line each, named by its key.

    Snakemake's validation message dumps the whole schema; this is what a user needs to read.
    """
    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(yaml.safe_load(Path(schema).read_text()))
    lines = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join(_part(p) for p in error.absolute_path) or "(top level)"
        lines.append(f"  {key}: {error.message}{_known_keys(error)}")
    return "config problems (keys and values are described in workflow/schemas/config.schema.yaml):\n" + "\n".join(lines)


def _known_keys(error: Any) -> str:
    """For a key the schema does not know (a typo, or another version's key): the nearest known key, or the
    known ones."""
    import difflib

    known = sorted(error.schema.get("properties") or {})
    if error.validator != "additionalProperties" or not known or not isinstance(error.instance, dict):
        return ""
    unknown = [name for name in error.instance if name not in known]
    if not unknown:  # (a schema whose additionalProperties names a pattern: nothing to suggest)
        return ""
    near = {name: difflib.get_close_matches(str(name), known, n=1, cutoff=0.6) for name in unknown}
    if len(near) == 1 and all(near.values()):
        return f"; did you mean {next(iter(near.values()))[0]!r}?"
    if all(near.values()):
        return "; did you mean " + ", ".join(f"{match[0]!r} for {name!r}" for name, match in near.items()) + "?"
    return f"; the keys known here: {', '.join(known)}"


def _part(key: Any) -> str:
    """One part of a config key as a message names it: quoted when it holds a line break or another control
    character (a typo in the YAML), so that the message stays one line per problem."""
    return str(key) if str(key).isprintable() else repr(key)


def check(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every cross-key problem, each by its config key."""
    problems: list[str] = []
    names = config["classes"]["names"]
    for raw, kept in config["classes"].get("map", {}).items():
        if kept not in names:
            problems.append(f"classes.map.{_part(raw)}: {kept!r} is not one of classes.names {names}")

    data = config["data"]
    if not Path(data["videos"]).is_dir():
        problems.append(f"data.videos: {data['videos']!r} is not a folder")
    if not data.get("import") and not Path(data["annotations"]).is_file():
        problems.append(f"data.annotations: {data['annotations']!r} does not exist")

    split = config.get("split", {})
    fractions = split.get("fractions", {})
    if fractions and abs(sum(fractions.values()) - 1) > 1e-6:
        problems.append(f"split.fractions: train + val + test must be 1, not {sum(fractions.values()):g}")

    # An overlap the user wrote must name kept classes; the reference default (null) only applies to those.
    for name in config.get("windows", {}).get("overlap") or {}:
        if name not in names:
            problems.append(f"windows.overlap.{_part(name)}: not one of classes.names {names}")

    faces = config.get("faces", {})
    if faces.get("detector") == "opencv_dnn" and not (faces.get("dnn_model") and faces.get("dnn_prototxt")):
        problems.append("faces.detector opencv_dnn needs faces.dnn_model and faces.dnn_prototxt (paths to the ResNet-10 SSD files)")
    for key in ("dnn_model", "dnn_prototxt", "mmod_model", "landmarks_model"):
        path = faces.get(key)
        if path and not Path(path).is_file():
            problems.append(f"faces.{key}: {path!r} does not exist")

    # Grid points are files named by point_name (6 significant digits): two values that
    # round to one name would be one file written twice.
    grid_cfg = config.get("sequence_model", {})
    for key in ("lr", "dropout"):
        values = grid_cfg.get(key, [])
        stems = [f"{v:g}" for v in values]
        if len(set(stems)) < len(stems):
            problems.append(f"sequence_model.{key}: {values} has values that are equal to 6 significant digits")

    if "transformer" in grid_cfg.get("architectures", []):
        odd = [h for h in grid_cfg.get("hidden", []) if h % TRANSFORMER_HEADS]
        if odd:
            problems.append(f"sequence_model.hidden: {odd} not divisible by {TRANSFORMER_HEADS}, the transformer's "
                            f"attention heads (its width is hidden); use multiples of {TRANSFORMER_HEADS} or drop "
                            "transformer from sequence_model.architectures")

    problems += initialisation.problems(config)
    images = (config.get("pretrain") or {}).get("images")
    if images and not Path(images["path"]).exists():
        problems.append(f"pretrain.images.path: {images['path']!r} does not exist (the {images['format']} image set)")
    for source, target in ((config.get("pretrain") or {}).get("classes") or {}).get("map", {}).items():
        if target is not None and target not in names:
            problems.append(f"pretrain.classes.map.{_part(source)}: {target!r} is not one of classes.names {names}")

    problems += _finetune_problems(config)

    if problems:
        raise ConfigError("config problems:\n" + "\n".join(f"  {p}" for p in problems))


def _finetune_problems(config: dict[str, Any]) -> list[str]:
    """What makes ``finetune.enabled`` impossible: fine-tuning trains the CNN under the LSTM, so the LSTM must read
    the CNN's embedding as it is (not landmarks; not minus medians taken from the embeddings before fine-tuning)."""
    if not config.get("finetune", {}).get("enabled"):
        return []
    problems = []
    windows_cfg = config.get("windows", {})
    features = windows_cfg.get("features", "embedding")
    if features != "embedding":
        problems.append(f"finetune.enabled: fine-tuning trains the frame CNN under the LSTM, which needs "
                        f"windows.features: embedding, not {features!r} (set finetune.enabled: false, or "
                        "windows.features: embedding)")
    if windows_cfg.get("normalise", "none") != "none":
        problems.append(f"finetune.enabled: windows.normalise: {windows_cfg['normalise']!r} subtracts medians of the "
                        "embeddings before fine-tuning, which the fine-tuned CNN changes; use windows.normalise: "
                        "none with finetune.enabled")
    architectures = config.get("sequence_model", {}).get("architectures", ["lstm"])
    if not set(architectures) & {"lstm", "lstm2", "bilstm"}:
        problems.append(f"finetune.enabled: fine-tuning starts from the grid's best LSTM, but "
                        f"sequence_model.architectures {architectures} has none of lstm, lstm2, bilstm")
    return problems

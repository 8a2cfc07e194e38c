"""`dsformer-vpr fit-similarity MAP`: fit the sequence localizer's measurement model and store it in the manifest.

Maps built before sequence localization lack the manifest's `similarity` section; the node then fits it at every
configure (with a warning). This command fits it once from the map's own descriptors and place poses and rewrites
only manifest.json (atomically); the map's data files and their checksums stay as they are.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dsformer_ros.maps.placemap import PlaceMap
from dsformer_ros.maps.similarity import SimilarityModel, fit_into_manifest

log = logging.getLogger(__name__)


def store_similarity(map_dir: str | Path, place_map: PlaceMap | None = None) -> SimilarityModel:
    """Fit the model of the map at `map_dir` (loaded unless given) and write it into its manifest."""
    place_map = place_map or PlaceMap.load(map_dir)
    model = fit_into_manifest(place_map)
    place_map.write_manifest(map_dir)
    log.info("map %s: similarity model stored in its manifest", map_dir)
    return model


def summary(model: SimilarityModel) -> dict:
    """The fitted numbers a user wants to see."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in model.to_manifest().items()
            if k not in ("profile_m", "profile_similarity")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fit-similarity`."""
    parser.add_argument("map", help="map directory (dsformer-vpr build-map)")


def run(args: argparse.Namespace) -> int:
    """Fit, store and print the model."""
    if not Path(args.map).is_dir():
        raise FileNotFoundError(f"map {args.map} does not exist or is not a directory")
    print(json.dumps(summary(store_similarity(args.map)), indent=2))
    return 0

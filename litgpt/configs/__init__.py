"""Named configs of published models, derived from their published config.json: one module per family.

Each family module holds:

  HF_CONFIG_JSON           our name -> the architecture keys of the model's published config.json (with
                           `_name_or_path`, the hub id), the one source of each named config
  PUBLISHED_PARAMS         total parameters as published, and PUBLISHED_PARAMS_SOURCE saying where from
  UPSTREAM_DIFFERENCES     where the named config differs from upstream litgpt 0.5.13's row of the same name, and why
  CONTEXT_CAPS             (optional) a max_position_embeddings to read instead of config.json's (Mistral v0.1: its
                           sliding window, within which attention is exact)

A row (`name_to_config[name]`, what `litgpt.Config.from_name(name)` builds) is `litgpt.configs.hf
.config_fields_from_hf` of that config.json: the converter's own mapping, so a named config and a converted
checkpoint of the same model agree field for field. Rows are built on first use (`rows()`); importing
`litgpt.configs` reads only these tables.
"""

from __future__ import annotations

import functools
from typing import Any

from litgpt.configs import deepseek, glm, llama, mistral, qwen, smollm, youtu

FAMILIES = (deepseek, glm, youtu, llama, qwen, smollm, mistral)

HF_CONFIG_JSON: dict[str, dict] = {k: v for family in FAMILIES for k, v in family.HF_CONFIG_JSON.items()}
CONTEXT_CAPS: dict[str, int] = {k: v for family in FAMILIES for k, v in getattr(family, "CONTEXT_CAPS", {}).items()}
PUBLISHED_PARAMS: dict[str, int] = {k: v for family in FAMILIES for k, v in family.PUBLISHED_PARAMS.items()}
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    k: v for family in FAMILIES for k, v in family.PUBLISHED_PARAMS_SOURCE.items()
}
UPSTREAM_DIFFERENCES: dict[str, str] = {k: v for family in FAMILIES for k, v in family.UPSTREAM_DIFFERENCES.items()}
NAMES: tuple[str, ...] = tuple(HF_CONFIG_JSON)

# What some published models have that our Config/model lacks, and how the named config deals with it.
FEATURES: dict[str, str] = {
    "sliding_window": (
        "sliding-window attention (upstream litgpt's sliding_window_size): not implemented; Mistral v0.1's named "
        "configs stop at the window (block_size 4096, CONTEXT_CAPS), where attention is exact"
    ),
    "latent_norm_eps": (
        "DeepSeek's reference MLA builds q_a_layernorm/kv_a_layernorm with eps 1e-6 whatever rms_norm_eps is; our "
        "norms all use norm_eps, so where rms_norm_eps != 1e-6 (Moonlight, GLM-4.7-Flash) the latent norms differ by "
        "their eps"
    ),
}
DEEPSEEK_LATENT_NORM_EPS = 1e-6


def published_config_json(name: str) -> dict[str, Any]:
    """The config.json a named config is read from: the published one, with `CONTEXT_CAPS` applied."""
    hf = dict(HF_CONFIG_JSON[name])
    if name in CONTEXT_CAPS:
        hf["max_position_embeddings"] = CONTEXT_CAPS[name]
    return hf


@functools.cache
def rows() -> dict[str, dict]:
    """name -> Config fields, each derived from its config.json by the converter's mapping (built once)."""
    from litgpt.configs.hf import config_fields_from_hf

    out = {}
    for name in NAMES:
        hf = published_config_json(name)
        org, repo = hf["_name_or_path"].split("/")
        out[name] = {**config_fields_from_hf(hf, name=name, warn=False), "hf_config": dict(org=org, name=repo)}
    return out


def missing_features(name: str) -> list[str]:
    """Keys of `FEATURES` the named model has that our Config approximates, in FEATURES' order."""
    hf, found = HF_CONFIG_JSON[name], []
    if name in CONTEXT_CAPS:
        found.append("sliding_window")
    if "kv_lora_rank" in hf and hf.get("rms_norm_eps", 1e-6) != DEEPSEEK_LATENT_NORM_EPS:
        found.append("latent_norm_eps")
    return found


def __getattr__(attr: str) -> Any:
    """`name_to_config` and `configs`, built on first access."""
    if attr == "name_to_config":
        return rows()
    if attr == "configs":
        return list(rows().values())
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "CONTEXT_CAPS", "FAMILIES", "FEATURES", "HF_CONFIG_JSON", "NAMES", "PUBLISHED_PARAMS", "PUBLISHED_PARAMS_SOURCE",
    "UPSTREAM_DIFFERENCES", "missing_features", "published_config_json", "rows",
]
